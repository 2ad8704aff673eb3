//! Usage: `/v1/tenants/{slug}/usage` (one tenant, per day and per month, against its quotas) and
//! `/v1/usage` (the fleet's month). The counts come from each isolate's background flush
//! (`core::usage`): a request shows here within about 10 s of being served.

use std::collections::BTreeMap;

use serde_json::json;
use worker::{Env, Request, Response};

use super::not_found;
use crate::core::lifecycle::TenantStatus;
use crate::core::slug::TenantSlug;
use crate::core::usage::{day_of, is_day, is_month, month_of};
use crate::edge;
use crate::http::{self, ApiError};

/// Days a tenant's usage covers when the request names none: today and the 30 before.
const DEFAULT_DAYS: f64 = 31.0;
/// Days one request may cover.
const MAX_DAYS: f64 = 400.0;
const DAY_MS: f64 = 86_400_000.0;

fn query(req: &Request) -> Result<BTreeMap<String, String>, ApiError> {
    Ok(req.url()?.query_pairs().into_owned().collect())
}

fn bad(field: &str, why: &str) -> ApiError {
    ApiError::invalid_fields([(field.to_owned(), why.to_owned())].into())
}

/// `GET /v1/tenants/{slug}/usage?from=YYYY-MM-DD&to=YYYY-MM-DD`
pub(super) async fn tenant(req: &Request, env: &Env, slug: &TenantSlug) -> Result<Response, ApiError> {
    let q = query(req)?;
    let now = js_sys::Date::now();
    let to = q.get("to").cloned().unwrap_or_else(|| day_of(now));
    let from =
        q.get("from").cloned().unwrap_or_else(|| day_of(js_sys::Date::parse(&to) - (DEFAULT_DAYS - 1.0) * DAY_MS));
    for (field, day) in [("from", &from), ("to", &to)] {
        if !is_day(day) {
            return Err(bad(field, "must be a day, YYYY-MM-DD"));
        }
    }
    let span = (js_sys::Date::parse(&to) - js_sys::Date::parse(&from)) / DAY_MS;
    if !(0.0..MAX_DAYS).contains(&span) {
        return Err(bad("from", "must be on or before `to`, at most 400 days before it"));
    }
    let db = edge::control(env)?;
    let t = db.tenant(slug.as_str()).await?.filter(|t| t.status != TenantStatus::Deleted);
    let Some(t) = t else { return Err(not_found(slug.as_str())) };
    let days = db.usage_days(slug.as_str(), &from, &to).await?;
    let months = db.usage_months(slug.as_str(), &from, &to).await?;
    let month = month_of(now);
    let used = t.terms.requests_in(&month);
    let quotas = t.terms.quotas(t.plan);
    let expired = t.terms.expires_ms().is_some_and(|at| now >= at);
    http::json(
        200,
        &json!({
            "tenant": t.slug,
            "plan": t.plan.as_str(),
            "from": from,
            "to": to,
            "days": days,
            "months": months,
            "current_month": {
                "month": month,
                "api_calls": { "used": used, "limit": quotas.api_calls_per_month },
                "storage_bytes": { "used": t.terms.size_bytes, "limit": quotas.storage_bytes },
            },
            "plan_expires_at": t.terms.plan_expires_at,
            "plan_expired": expired,
        }),
    )
}

/// `GET /v1/usage?month=YYYY-MM&limit=&offset=`: the fleet's totals for the month, and its
/// tenants by API calls, most first.
pub(super) async fn fleet(req: &Request, env: &Env) -> Result<Response, ApiError> {
    let q = query(req)?;
    let month = q.get("month").cloned().unwrap_or_else(|| month_of(js_sys::Date::now()));
    if !is_month(&month) {
        return Err(bad("month", "must be a month, YYYY-MM"));
    }
    let number = |key: &str, default: u32, max: u32| -> Result<u32, ApiError> {
        match q.get(key) {
            None => Ok(default),
            Some(v) => {
                v.parse::<u32>().ok().filter(|n| *n <= max).ok_or_else(|| bad(key, "must be a whole number in range"))
            }
        }
    };
    let limit = number("limit", 50, 500)?.max(1);
    let offset = number("offset", 0, 1_000_000)?;
    let db = edge::control(env)?;
    let (tenants, totals) = db.fleet_usage(&month).await?;
    let top = db.fleet_usage_by_tenant(&month, limit, offset).await?;
    let next = (top.len() as u32 == limit).then_some(offset + limit);
    http::json(
        200,
        &json!({
            "month": month,
            "tenants_with_usage": tenants,
            "totals": totals,
            "tenants": top,
            "next_offset": next,
        }),
    )
}
