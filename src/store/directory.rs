//! The tenant directory: the control plane's row for a slug on the request path, through an
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

use super::control::{ControlStore, TenantRecord};
use super::sql::{Sql, SqlError};
use crate::core::cache::TtlCache;
use crate::core::slug::TenantSlug;

/// How long a looked-up tenant is trusted.
pub const TTL_MS: f64 = 5_000.0;
/// Past this age a cached row is refreshed in the background by the request that notices.
pub const REFRESH_AFTER_MS: f64 = 4_000.0;
/// Tenants kept per isolate.
pub const CAPACITY: usize = 10_000;

/// How long a verification is trusted. A binding host's binding set can change without the main
/// Worker's isolates restarting (unlike its own bindings, which change only with a new version),
/// so a verification is renewed at least this often: a binding re-pointed behind tenantry's back
/// is refused within this bound (one batch of two reads per tenant per isolate per period).
pub const VERIFIED_MS: f64 = 30_000.0;

/// What a verification was of: the database id and the host the row named, and when.
#[derive(Clone, PartialEq)]
struct Verified {
    database: String,
    host: Option<String>,
    at: f64,
}

#[derive(Clone)]
struct Entry {
    record: Option<TenantRecord>,
    verified: Option<Verified>,
}

/// The verification still holds for `record` at `now`.
fn still_verified(v: &Verified, record: Option<&TenantRecord>, now: f64) -> bool {
    record.is_some_and(|r| r.database_id.as_deref() == Some(v.database.as_str()) && r.host == v.host)
        && now - v.at < VERIFIED_MS
}

thread_local! {
    static CACHE: RefCell<TtlCache<TenantSlug, Entry>> = RefCell::new(TtlCache::new(CAPACITY, TTL_MS));
    /// Tenants whose background refresh is under way in this isolate.
    static REFRESHING: RefCell<HashSet<TenantSlug>> = RefCell::new(HashSet::new());
}

/// A lookup's result, and whether it cost a control-plane query.
pub struct Lookup {
    pub record: Option<TenantRecord>,
    /// This isolate verified the database the row names (stamp and schema) recently: the
    /// binding can be trusted without checking again.
    pub verified: bool,
    /// Queries on this request's path: 1 when the cache could not answer, else 0.
    pub control_plane_queries: u32,
    /// The row is aging and this request should start its background refresh ([`refresh`]).
    pub refresh_due: bool,
}

fn verified(entry: &Entry, now: f64) -> bool {
    entry.verified.as_ref().is_some_and(|v| still_verified(v, entry.record.as_ref(), now))
}

/// The tenant's row (None: no such tenant), from the cache when fresh. `now` is the wall clock
/// in milliseconds.
pub async fn lookup<S: Sql>(store: &ControlStore<S>, slug: &TenantSlug, now: f64) -> Result<Lookup, SqlError> {
    if let Some((entry, age)) = CACHE.with(|c| c.borrow_mut().get_aged(slug, now)) {
        // Only the first request to notice starts the refresh.
        let refresh_due = age >= REFRESH_AFTER_MS && REFRESHING.with(|r| r.borrow_mut().insert(slug.clone()));
        return Ok(Lookup {
            verified: verified(&entry, now),
            record: entry.record,
            control_plane_queries: 0,
            refresh_due,
        });
    }
    let record = store.tenant_record(slug.as_str()).await?;
    CACHE.with(|c| c.borrow_mut().insert(slug.clone(), Entry { record: record.clone(), verified: None }, now));
    Ok(Lookup { record, verified: false, control_plane_queries: 1, refresh_due: false })
}

/// The background half of refresh-ahead: reads the row again and renews the entry. The database
/// verification carries over when the row still names the verified database (bindings, and so
/// what was verified, only change with a new Worker version, which starts new isolates).
///
/// The entry is timestamped with when the read *began*, so no row read before a change of the
/// control plane (a restore's `restoring`) outlives that change by more than [`TTL_MS`].
pub async fn refresh<S: Sql>(store: ControlStore<S>, slug: TenantSlug, now: impl Fn() -> f64) {
    let began = now();
    let outcome = store.tenant_record(slug.as_str()).await;
    // Not in the set any more: the admin API forgot the tenant meanwhile, so what was read may
    // predate its change; the next request looks it up afresh.
    if !REFRESHING.with(|r| r.borrow_mut().remove(&slug)) {
        return;
    }
    match outcome {
        Ok(record) => CACHE.with(|c| {
            let mut cache = c.borrow_mut();
            let verified =
                cache.get(&slug, now()).and_then(|e| e.verified).filter(|v| still_verified(v, record.as_ref(), began));
            cache.insert(slug, Entry { record, verified }, began);
        }),
        // The entry expires on its own; the next request looks the tenant up on its path.
        Err(e) => crate::log::warn(&format!("background refresh of tenant {slug} failed: {e}")),
    }
}

/// Remembers that `database_id` was verified for `slug`. Called right after the lookup that
/// inserted the entry, so this barely moves its expiry; an expired entry is not revived.
pub fn mark_verified(slug: &TenantSlug, record: &TenantRecord, now: f64) {
    let Some(database) = record.database_id.clone() else { return };
    CACHE.with(|c| {
        let verified = Verified { database, host: record.host.clone(), at: now };
        let entry = Entry { record: Some(record.clone()), verified: Some(verified) };
        let mut cache = c.borrow_mut();
        if cache.get(slug, now).is_some() {
            cache.insert(slug.clone(), entry, now);
        }
    });
}

/// Drops `slug` from this isolate's cache (after the admin API changed it).
pub fn forget(slug: &TenantSlug) {
    CACHE.with(|c| c.borrow_mut().remove(slug));
    REFRESHING.with(|r| r.borrow_mut().remove(slug));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(database: &str, host: Option<&str>) -> TenantRecord {
        serde_json::from_value(serde_json::json!({
            "slug": "acme", "status": "active", "plan": "free", "status_message": null,
            "database_id": database, "maintenance_message": null, "maintenance_until": null,
            "fleet_maintenance": null, "host": host,
        }))
        .unwrap()
    }

    #[test]
    fn a_verification_holds_for_its_database_and_host_and_expires() {
        let v = Verified { database: "db-1".into(), host: Some("h-1".into()), at: 1_000.0 };
        assert!(still_verified(&v, Some(&record("db-1", Some("h-1"))), 1_000.0 + VERIFIED_MS - 1.0));
        assert!(!still_verified(&v, Some(&record("db-1", Some("h-1"))), 1_000.0 + VERIFIED_MS), "expired");
        assert!(!still_verified(&v, Some(&record("db-2", Some("h-1"))), 1_001.0), "another database");
        assert!(!still_verified(&v, Some(&record("db-1", None)), 1_001.0), "moved off its host");
        assert!(!still_verified(&v, None, 1_001.0));
    }
}
