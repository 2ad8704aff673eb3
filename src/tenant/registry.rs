//! The tenant lookup on the request path: the control plane's row for a slug, through an
//! isolate-local cache (short TTL, bounded size), so a hot request makes no control-plane query.
//!
//! The cache is keyed by [`TenantSlug`] and holds only that tenant's row, plus which database id
//! was last verified for it (stamp and schema), so the verification query is not repeated either.
//! A change made on the control plane (a suspension) is seen within [`TTL_MS`]; the admin API
//! forgets the entry at once in its own isolate.
//!
//! Refresh-ahead: a request that finds its tenant's row older than [`REFRESH_AFTER_MS`] is served
//! from the cache and starts one background refresh (`ctx.wait_until`), so a tenant with steady
//! traffic never waits on the control plane, and a whole burst of requests arriving as the row
//! ages starts one query, not one each. A tenant idle for longer than the TTL is looked up on the
//! request path, as before.

use std::cell::RefCell;
use std::collections::HashSet;

use serde::Deserialize;
use wasm_bindgen::JsValue;
use worker::Env;

use crate::core::cache::TtlCache;
use crate::core::slug::TenantSlug;
use crate::http::ApiError;

/// How long a looked-up tenant is trusted.
pub const TTL_MS: f64 = 5_000.0;
/// Past this age a cached row is refreshed in the background by the request that notices.
pub const REFRESH_AFTER_MS: f64 = 4_000.0;
/// Tenants kept per isolate.
pub const CAPACITY: usize = 10_000;

/// What the request path needs of a tenant's control-plane row.
#[derive(Debug, Clone, Deserialize)]
pub struct TenantRecord {
    pub slug: String,
    pub status: String,
    pub plan: String,
    pub status_message: Option<String>,
    pub database_id: Option<String>,
    pub maintenance_message: Option<String>,
    pub maintenance_until: Option<String>,
    /// The fleet-wide maintenance (JSON `{message, until}`), read in the same query.
    pub fleet_maintenance: Option<String>,
}

#[derive(Clone)]
struct Entry {
    record: Option<TenantRecord>,
    verified_database: Option<String>,
}

thread_local! {
    static CACHE: RefCell<TtlCache<TenantSlug, Entry>> = RefCell::new(TtlCache::new(CAPACITY, TTL_MS));
    /// Tenants whose background refresh is under way in this isolate.
    static REFRESHING: RefCell<HashSet<TenantSlug>> = RefCell::new(HashSet::new());
}

/// A lookup's result, and whether it cost a control-plane query.
pub struct Lookup {
    pub record: Option<TenantRecord>,
    pub verified_database: Option<String>,
    /// Queries on this request's path: 1 when the cache could not answer, else 0.
    pub control_plane_queries: u32,
    /// The row is aging and this request should start its background refresh ([`refresh`]).
    pub refresh_due: bool,
}

fn now() -> f64 {
    js_sys::Date::now()
}

/// The tenant's row (None: no such tenant), from the cache when fresh.
pub async fn lookup(env: &Env, slug: &TenantSlug) -> Result<Lookup, ApiError> {
    if let Some((entry, age)) = CACHE.with(|c| c.borrow_mut().get_aged(slug, now())) {
        // Only the first request to notice starts the refresh.
        let refresh_due = age >= REFRESH_AFTER_MS && REFRESHING.with(|r| r.borrow_mut().insert(slug.clone()));
        return Ok(Lookup {
            record: entry.record,
            verified_database: entry.verified_database,
            control_plane_queries: 0,
            refresh_due,
        });
    }
    let record = fetch(env, slug).await?;
    CACHE.with(|c| {
        c.borrow_mut().insert(slug.clone(), Entry { record: record.clone(), verified_database: None }, now())
    });
    Ok(Lookup { record, verified_database: None, control_plane_queries: 1, refresh_due: false })
}

/// The background half of refresh-ahead: reads the row again and renews the entry. The database
/// verification carries over when the row still names the verified database (bindings, and so
/// what was verified, only change with a new Worker version, which starts new isolates).
pub async fn refresh(env: Env, slug: TenantSlug) {
    let outcome = fetch(&env, &slug).await;
    // Not in the set any more: the admin API forgot the tenant meanwhile, so what was read may
    // predate its change; the next request looks it up afresh.
    if !REFRESHING.with(|r| r.borrow_mut().remove(&slug)) {
        return;
    }
    match outcome {
        Ok(record) => CACHE.with(|c| {
            let mut cache = c.borrow_mut();
            let verified = cache
                .get(&slug, now())
                .and_then(|e| e.verified_database)
                .filter(|v| record.as_ref().and_then(|r| r.database_id.as_ref()) == Some(v));
            cache.insert(slug, Entry { record, verified_database: verified }, now());
        }),
        // The entry expires on its own; the next request looks the tenant up on its path.
        Err(e) => worker::console_warn!("background refresh of tenant {slug} failed: {e:?}"),
    }
}

async fn fetch(env: &Env, slug: &TenantSlug) -> Result<Option<TenantRecord>, ApiError> {
    let db = env.d1(crate::control::CONTROL_BINDING)?;
    let record: Option<TenantRecord> = db
        .prepare(
            "SELECT slug, status, plan, status_message, database_id, maintenance_message, maintenance_until, \
             (SELECT value FROM platform WHERE key = 'maintenance') AS fleet_maintenance FROM tenants WHERE slug = ?1",
        )
        .bind(&[JsValue::from_str(slug.as_str())])?
        .first(None)
        .await?;
    Ok(record)
}

/// Remembers that `database_id` was verified for `slug`. Called right after the lookup that
/// inserted the entry, so this barely moves its expiry; an expired entry is not revived.
pub fn mark_verified(slug: &TenantSlug, record: &TenantRecord, database_id: &str) {
    CACHE.with(|c| {
        let entry = Entry { record: Some(record.clone()), verified_database: Some(database_id.to_owned()) };
        let mut cache = c.borrow_mut();
        if cache.get(slug, now()).is_some() {
            cache.insert(slug.clone(), entry, now());
        }
    });
}

/// Drops `slug` from this isolate's cache (after the admin API changed it).
pub fn forget(slug: &str) {
    if let Ok(slug) = TenantSlug::parse(slug) {
        CACHE.with(|c| c.borrow_mut().remove(&slug));
        REFRESHING.with(|r| r.borrow_mut().remove(&slug));
    }
}
