//! The tenant audit log's hash chain on the tenant API: `GET /api/audit-log/verify` (admins), and
//! sealing the rows a request wrote, in the background once it has answered.
//!
//! Sealing runs after the response (`ctx.wait_until`), so it costs a write nothing on its path.
//! One isolate runs at most one background sealing per tenant at a time: a request that finds one
//! running asks it to make one more pass instead of starting its own, so a burst of writes in one
//! isolate seals in a few passes, not one each. Passes in different isolates may overlap; they
//! compute the same seals and the conditional updates let only one of them write
//! (`store::audit`).

use std::cell::RefCell;
use std::collections::HashMap;

use wasm_bindgen::JsCast;
use worker::{Context, D1Database, Response};

use super::TenantContext;
use crate::core::audit_chain;
use crate::core::slug::TenantSlug;
use crate::http::{self, ApiError};
use crate::store::audit;

/// Passes (of `audit::SEAL_BATCH` rows) one background sealing makes per round.
const BACKGROUND_PASSES: u32 = 5;
/// Passes a verification makes first, so what it reports is sealed as far as it can be.
const VERIFY_PASSES: u32 = 10;
/// Rows a verification page checks: 1,000 unless `limit` asks, at most 5,000.
const PAGE: u32 = 1_000;
const MAX_PAGE: u32 = 5_000;
/// A background sealing not heard from for this long is taken as gone (its invocation ended
/// early): the next write starts another.
const STALE_MS: f64 = 10_000.0;

thread_local! {
    /// Tenants with a background sealing under way in this isolate: since when, and whether a
    /// request asked for one more pass.
    static SEALING: RefCell<HashMap<TenantSlug, (f64, bool)>> = RefCell::new(HashMap::new());
}

/// Seals `slug`'s unsealed audit rows after the response, unless a sealing this isolate started
/// is still under way (it then makes one more pass).
pub fn seal_later(wctx: &Context, db: &D1Database, slug: &TenantSlug) {
    let now = js_sys::Date::now();
    let start = SEALING.with(|s| {
        let mut s = s.borrow_mut();
        match s.get_mut(slug) {
            Some((since, again)) if now - *since < STALE_MS => {
                *again = true;
                false
            }
            _ => {
                s.insert(slug.clone(), (now, false));
                true
            }
        }
    });
    if !start {
        return;
    }
    // The same binding, owned by the background task.
    let db: D1Database = db.as_ref().clone().unchecked_into();
    let slug = slug.clone();
    let genesis = audit_chain::genesis(slug.as_str());
    wctx.wait_until(async move {
        loop {
            if let Err(e) = audit::seal(&db, &genesis, BACKGROUND_PASSES).await {
                crate::log::warn(&format!("tenant {slug}: sealing audit rows failed (the next write retries): {e}"));
            }
            let again = SEALING.with(|s| {
                let mut s = s.borrow_mut();
                match s.get_mut(&slug) {
                    Some((since, again)) if *again => {
                        (*since, *again) = (js_sys::Date::now(), false);
                        true
                    }
                    _ => {
                        s.remove(&slug);
                        false
                    }
                }
            });
            if !again {
                break;
            }
        }
    });
}

/// `GET /api/audit-log/verify?limit=&cursor=` (admins): seals what is unsealed, then verifies a
/// page of the chain from the first row (or after `cursor`), and the operator's anchor.
pub async fn verify(ctx: &TenantContext) -> Result<Response, ApiError> {
    ctx.require_admin()?;
    let (limit, cursor) = http::page_params_in(ctx.url(), PAGE, MAX_PAGE)?;
    let genesis = audit_chain::genesis(ctx.slug().as_str());
    let anchor = ctx.platform().audit_anchor(ctx.slug()).await?;
    audit::seal(ctx.db(), &genesis, VERIFY_PASSES).await?;
    let report = audit::verify(ctx.db(), &genesis, cursor, limit, anchor.as_ref()).await?;
    http::json(200, &report)
}
