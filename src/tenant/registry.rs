//! The tenant lookup on the request path: the control plane's row for a slug, through an
//! isolate-local cache (short TTL, bounded size), so a hot request makes no control-plane query.
//!
//! The cache is keyed by [`TenantSlug`] and holds only that tenant's row, plus which database id
//! was last verified for it (stamp and schema), so the verification query is not repeated either.
//! A change made on the control plane (a suspension) is seen within [`TTL_MS`]; the admin API
//! forgets the entry at once in its own isolate.

use std::cell::RefCell;

use serde::Deserialize;
use wasm_bindgen::JsValue;
use worker::Env;

use crate::core::cache::TtlCache;
use crate::core::slug::TenantSlug;
use crate::http::ApiError;

/// How long a looked-up tenant is trusted.
pub const TTL_MS: f64 = 5_000.0;
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
}

/// A lookup's result, and whether it cost a control-plane query.
pub struct Lookup {
    pub record: Option<TenantRecord>,
    pub verified_database: Option<String>,
    pub control_plane_queries: u32,
}

fn now() -> f64 {
    js_sys::Date::now()
}

/// The tenant's row (None: no such tenant), from the cache when fresh.
pub async fn lookup(env: &Env, slug: &TenantSlug) -> Result<Lookup, ApiError> {
    if let Some(entry) = CACHE.with(|c| c.borrow_mut().get(slug, now())) {
        return Ok(Lookup {
            record: entry.record,
            verified_database: entry.verified_database,
            control_plane_queries: 0,
        });
    }
    let db = env.d1(crate::control::CONTROL_BINDING)?;
    let record: Option<TenantRecord> = db
        .prepare(
            "SELECT slug, status, plan, status_message, database_id, maintenance_message, maintenance_until, \
             (SELECT value FROM platform WHERE key = 'maintenance') AS fleet_maintenance FROM tenants WHERE slug = ?1",
        )
        .bind(&[JsValue::from_str(slug.as_str())])?
        .first(None)
        .await?;
    CACHE.with(|c| {
        c.borrow_mut().insert(slug.clone(), Entry { record: record.clone(), verified_database: None }, now())
    });
    Ok(Lookup { record, verified_database: None, control_plane_queries: 1 })
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
    }
}
