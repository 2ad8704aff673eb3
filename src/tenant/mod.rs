//! The tenant API on `{slug}.{APEX}` (or the apex with `X-Tenant-ID`), served from that tenant's
//! own D1 database only.
//!
//! The request path, all in [`handle`] and [`open`]: look the tenant up (the directory, cached)
//! and let its status decide; open its database by binding name (`TenantDb`, checked to be
//! stamped with this slug and at this Worker's schema, unless this isolate verified it recently);
//! authenticate the bearer token against the routed tenant; build the [`TenantContext`]; run the
//! handler. Handlers get the database only through the context.
//!
//! Adding a route is one line in [`route`] and a handler `async fn(&TenantContext, &Request)`.
//!
//! Layer: below the router, beside the control plane (neither uses the other). It may use the
//! storage layer (`store`, `edge`), the `http` toolkit and the core.

mod audit;
mod auth;
mod context;
mod export;
pub mod heal;
mod projects;
mod roles;
mod settings;
mod users;

use serde::Deserialize;
use worker::{Context, D1Database, Env, Request, Response};

pub use context::TenantContext;

use crate::core::lifecycle::{Plan, TenantStatus};
use crate::core::names::BindingName;
use crate::core::plans::{self, QuotaRefusal, RateLimit, Standing, WriteKind};
use crate::core::slug::TenantSlug;
use crate::core::usage::{Counters, Flush};
use crate::edge;
use crate::edge::meter::Meter;
use crate::http::{self, ApiError, Method};
use crate::store::control::{ControlStore, PlanTerms, TenantRecord};
use crate::store::directory::{self, Lookup};
use crate::store::ports::Home;
use crate::store::tenant_db::{NotReady, TenantDb as Checked};

/// A tenant's database through its binding (on this Worker, or through its binding host).
pub type TenantDb = Checked<D1Database>;

/// Seconds a client should wait before retrying when the tenant is not ready.
const RETRY_AFTER_SECONDS: u32 = 5;

/// The header that reports how many control-plane queries this request made (0 when hot).
pub const CONTROL_QUERIES_HEADER: &str = "X-Tenantry-Control-Queries";

/// The header on the response of a request that started a background refresh of its tenant's row.
pub const CONTROL_REFRESH_HEADER: &str = "X-Tenantry-Control-Refresh";

pub async fn handle(
    req: &Request,
    url: worker::Url,
    env: &Env,
    ctx: &Context,
    slug: TenantSlug,
    request_id: &str,
) -> Result<Response, ApiError> {
    let path = url.path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segments.first() != Some(&"api") {
        return Err(http::route_not_found());
    }
    // The control plane being unreachable is our problem, and a passing one: 503, not 500.
    let unavailable = |detail: String| {
        ApiError::Unavailable {
            code: "control_plane_unavailable",
            message: "the service is temporarily unavailable; retry shortly".into(),
            retry_after: RETRY_AFTER_SECONDS,
        }
        .inspect_log(&detail)
    };
    let control = edge::control(env)?;
    let lookup = directory::lookup(&control, &slug, js_sys::Date::now())
        .await
        .map_err(|e| unavailable(format!("tenant lookup for {slug} failed: {e}")))?;
    let queries = lookup.control_plane_queries;
    let refresh = lookup.refresh_due;
    if refresh {
        ctx.wait_until(directory::refresh(edge::control(env)?, slug.clone(), js_sys::Date::now));
    }
    // Metered: every request to a tenant that serves (see `core::usage`).
    let metered = lookup.record.as_ref().is_some_and(|r| r.status == TenantStatus::Active);
    let meter = Meter::default();
    let mut outcome = serve(req, url, env, ctx, &control, slug.clone(), request_id, lookup, &segments, &meter).await;
    // The plan's rate limit (asked when serving began): refused, the request is answered 429
    // whatever it came to, and none of its statements reached the database.
    if let Some(which) = meter.refused().await {
        outcome = Err(rate_limited(which));
    }
    if metered {
        let counters = match &outcome {
            Err(ApiError::RateLimited { .. }) => Counters { limited: 1, ..Counters::default() },
            _ => meter.counters(),
        };
        let when = edge::meter::record(slug.as_str(), &counters, js_sys::Date::now());
        if when != Flush::No {
            ctx.wait_until(edge::meter::flush(edge::control(env)?, when));
        }
    }
    let mut response = outcome.unwrap_or_else(|e| http::error_response(&e));
    let _ = response.headers_mut().set(CONTROL_QUERIES_HEADER, &queries.to_string());
    if refresh {
        let _ = response.headers_mut().set(CONTROL_REFRESH_HEADER, "1");
    }
    Ok(response)
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    req: &Request,
    url: worker::Url,
    env: &Env,
    wctx: &Context,
    control: &ControlStore<D1Database>,
    slug: TenantSlug,
    request_id: &str,
    lookup: Lookup,
    segments: &[&str],
    meter: &Meter,
) -> Result<Response, ApiError> {
    let record = lookup.record.ok_or_else(|| not_found(&slug))?;
    if matches!(record.status, TenantStatus::Active | TenantStatus::Suspended) {
        // A restore is running: nothing is read or written until it is done (see
        // `control::lifecycle::restores` for why no cache can outlive it).
        if record.restoring.is_some() {
            return Err(ApiError::Unavailable {
                code: "tenant_restoring",
                message: "this tenant's data is being restored; retry shortly".into(),
                retry_after: RETRY_AFTER_SECONDS.max(10),
            });
        }
        if let Some(maintenance) = maintenance(&record) {
            return Err(maintenance);
        }
    }
    match record.status {
        TenantStatus::Active => {}
        TenantStatus::Provisioning => {
            return Err(ApiError::Unavailable {
                code: "tenant_provisioning",
                message: "this tenant is still being set up; retry shortly".into(),
                retry_after: RETRY_AFTER_SECONDS,
            })
        }
        TenantStatus::Suspended => {
            let why = record.status_message.as_deref().unwrap_or("contact the platform operator");
            return Err(ApiError::Forbidden {
                code: "tenant_suspended",
                message: format!("this tenant is suspended: {why}"),
            });
        }
        TenantStatus::Failed => {
            return Err(ApiError::Unavailable {
                code: "tenant_unavailable",
                message: "this tenant could not be set up; the platform operator has been told".into(),
                retry_after: 60,
            })
        }
        TenantStatus::Deleting | TenantStatus::Deleted => return Err(not_found(&slug)),
    }
    // The plan's rate limit, before anything else is done for the request: asked now, waited
    // for by the first statement (see `Meter::gate`), decided in `handle`.
    let plan_limit = RateLimit::Tenant(record.plan);
    meter.gate(env, plan_limit, &plan_limit.key(slug.as_str(), ""));
    let tenant = open(env, control, slug.clone(), &record, lookup.verified, meter).await?;

    // The one unauthenticated tenant route.
    if segments == ["api", "auth", "login"] {
        let Method::Post = Method::of(req) else {
            return Err(http::method_not_allowed("POST"));
        };
        let ip = req.headers().get("CF-Connecting-IP").ok().flatten().unwrap_or_else(|| "unknown".into());
        limit(env, RateLimit::LoginIp, &slug, &ip).await?;
        let outcome = auth::login(req, env, &tenant, &record, request_id).await;
        // A sign-in writes an audit row whether it succeeds or fails its password check.
        let audited = match &outcome {
            Ok(response) => response.status_code() == 200,
            Err(e) => e.status() == 401,
        };
        if audited {
            audit::seal_later(wctx, tenant.db(), tenant.slug());
        }
        return outcome;
    }
    let host = record.host.clone();
    // Only a write needs the plan's terms: a read neither copies nor parses them.
    let write = write_kind(Method::of(req)).map(|kind| (kind, record.plan, record.terms.clone()));
    let ctx = auth::authenticate(req, env, tenant, record, request_id, url).await?;
    if let Some((kind, plan, terms)) = write {
        limit(env, RateLimit::UserWrites, &slug, &ctx.user().id.to_string()).await?;
        check_terms(&terms, plan, kind, slug.as_str())?;
    }
    let outcome = route(&ctx, req, segments).await;
    if ctx.audited() {
        audit::seal_later(wctx, ctx.db(), ctx.slug());
    }
    if let Err(ApiError::Unavailable { code: "tenant_unavailable", .. }) = &outcome {
        // A database verified earlier that stopped answering through its host (its binding
        // removed there): have the host's bindings checked.
        heal::wanted(host.as_deref());
    }
    outcome
}

/// Refuses the request (429) when rate limit `which` has no room left for `subject` in tenant
/// `slug`.
pub(crate) async fn limit(env: &Env, which: RateLimit, slug: &TenantSlug, subject: &str) -> Result<(), ApiError> {
    if edge::meter::allow(env, which, &which.key(slug.as_str(), subject)).await {
        return Ok(());
    }
    Err(rate_limited(which))
}

/// The 429 of rate limit `which`.
fn rate_limited(which: RateLimit) -> ApiError {
    let (allowed, period) = which.allowance();
    ApiError::RateLimited { limit: which.name(), allowed, period }
}

/// What a request of `method` is to quotas: `None` for a read.
fn write_kind(method: Method) -> Option<WriteKind> {
    match method {
        Method::Post | Method::Put | Method::Patch => Some(WriteKind::Grow),
        Method::Delete => Some(WriteKind::Shrink),
        _ => None,
    }
}

/// Refuses a write the plan's end or a quota forbids (402, its code and figures), from the
/// tenant's cached row and this isolate's unflushed count.
fn check_terms(terms: &PlanTerms, plan: Plan, kind: WriteKind, slug: &str) -> Result<(), ApiError> {
    let now = js_sys::Date::now();
    let month = crate::core::usage::month_of(now);
    let standing = Standing {
        plan_expires_ms: terms.expires_ms(),
        plan_expires_at: terms.plan_expires_at.as_deref(),
        month_requests: terms.requests_in(&month) + edge::meter::pending_requests(slug, &month),
        month: &month,
        size_bytes: terms.size(),
    };
    plans::check_write(terms.quotas(plan), &standing, kind, now).map_err(|refusal| {
        let detail = match &refusal {
            QuotaRefusal::PlanExpired { at } => serde_json::json!({ "plan_expires_at": at }),
            QuotaRefusal::ApiCalls { limit, used, month } => {
                serde_json::json!({ "quota": "api_calls_per_month", "limit": limit, "used": used, "month": month })
            }
            QuotaRefusal::Storage { limit, used } => {
                serde_json::json!({ "quota": "storage_bytes", "limit": limit, "used": used })
            }
        };
        ApiError::PaymentRequired { code: refusal.code(), message: refusal.to_string(), detail }
    })
}

/// The tenant API's routes.
async fn route(ctx: &TenantContext, req: &Request, segments: &[&str]) -> Result<Response, ApiError> {
    use Method::*;
    match (segments, Method::of(req)) {
        (["api", "me"], Get) => users::me(ctx).await,
        (["api", "tenant"], Get) => tenant_info(ctx).await,
        (["api", "export"], Get) => export::export(ctx).await,
        (["api", "users"], Get) => users::list(ctx).await,
        (["api", "users"], Post) => users::create(ctx, req).await,
        (["api", "users", id], Get) => users::get(ctx, id).await,
        (["api", "users", id], Patch) => users::update(ctx, req, id).await,
        (["api", "users", id], Delete) => users::delete(ctx, id).await,
        (["api", "projects"], Get) => projects::list(ctx).await,
        (["api", "projects"], Post) => projects::create(ctx, req).await,
        (["api", "projects", id], Get) => projects::get(ctx, id).await,
        (["api", "projects", id], Patch) => projects::update(ctx, req, id).await,
        (["api", "projects", id], Delete) => projects::delete(ctx, id).await,
        (["api", "audit-log"], Get) => context::audit_log(ctx).await,
        (["api", "audit-log", "verify"], Get) => audit::verify(ctx).await,
        (["api", "roles"], Get) => roles::list(ctx).await,
        (["api", "roles"], Post) => roles::create(ctx, req).await,
        (["api", "roles", name], Patch) => roles::update(ctx, req, name).await,
        (["api", "roles", name], Delete) => roles::delete(ctx, name).await,
        (["api", "roles", _], _) => Err(http::method_not_allowed("PATCH, DELETE")),
        (["api", "settings"], Get) => settings::get(ctx).await,
        (["api", "settings"], Patch) => settings::update(ctx, req).await,
        (["api", "settings"], _) => Err(http::method_not_allowed("GET, PATCH")),
        (["api", "me" | "tenant" | "audit-log" | "export"], _) => Err(http::method_not_allowed("GET")),
        (["api", "audit-log", "verify"], _) => Err(http::method_not_allowed("GET")),
        (["api", "users" | "projects" | "roles"], _) => Err(http::method_not_allowed("GET, POST")),
        (["api", "users" | "projects", _], _) => Err(http::method_not_allowed("GET, PATCH, DELETE")),
        _ => Err(http::route_not_found()),
    }
}

/// The 503 for a tenant (or the whole fleet) in maintenance, if it is.
fn maintenance(record: &TenantRecord) -> Option<ApiError> {
    #[derive(Deserialize)]
    struct Fleet {
        message: String,
        until: Option<String>,
    }
    let (message, until) = match (&record.maintenance_message, &record.fleet_maintenance) {
        (Some(message), _) => (message.clone(), record.maintenance_until.clone()),
        (None, Some(fleet)) => {
            let fleet: Fleet = serde_json::from_str(fleet).ok()?;
            (fleet.message, fleet.until)
        }
        (None, None) => return None,
    };
    let now = js_sys::Date::now();
    let retry_after = until
        .as_deref()
        .map(js_sys::Date::parse)
        .filter(|ms| ms.is_finite())
        .map_or(60, |ms| (((ms - now) / 1000.0).ceil().clamp(5.0, 3600.0)) as u32);
    let until_text = until.map(|u| format!(" (expected to end {u})")).unwrap_or_default();
    Some(ApiError::Unavailable { code: "maintenance", message: format!("{message}{until_text}"), retry_after })
}

fn not_found(slug: &TenantSlug) -> ApiError {
    ApiError::not_found("tenant_not_found", format!("there is no tenant `{slug}`"))
}

/// The tenant's database: trusted when this isolate verified it recently, else opened and
/// checked (stamp and schema, migrating on demand), and remembered as verified.
async fn open(
    env: &Env,
    control: &ControlStore<D1Database>,
    slug: TenantSlug,
    record: &TenantRecord,
    verified: bool,
    meter: &Meter,
) -> Result<TenantDb, ApiError> {
    let db = meter.wrap(binding(env, &slug, record)?);
    if verified {
        return Ok(TenantDb::trusted(db, slug));
    }
    match TenantDb::open(db, slug.clone(), control).await {
        Ok(tenant) => {
            directory::mark_verified(&slug, record, js_sys::Date::now());
            Ok(tenant)
        }
        // Held back by the rate limit: `handle` answers 429.
        Err(_) if meter.held_back() => Err(ApiError::internal("rate limited")),
        Err(NotReady::Migrating(e)) => {
            crate::log::error(&format!("tenant {slug}: on-demand migration failed: {e}"));
            Err(ApiError::Unavailable {
                code: "tenant_migrating",
                message: "this tenant's database is being brought up to date; retry shortly".into(),
                retry_after: RETRY_AFTER_SECONDS,
            })
        }
        Err(NotReady::Unreachable(e)) if e.not_bound => {
            // Its host does not hold its binding (yet, or any more): restore it.
            heal::wanted(record.host.as_deref());
            crate::log::error(&format!(
                "tenant {slug}: its host does not hold its binding; the reconciler restores it"
            ));
            Err(ApiError::tenant_unavailable())
        }
        Err(e) => {
            crate::log::error(&format!("tenant {slug}: database not ready: {e}"));
            Err(ApiError::Unavailable {
                code: "tenant_unavailable",
                message: "this tenant's database is not ready; retry shortly".into(),
                retry_after: RETRY_AFTER_SECONDS,
            })
        }
    }
}

/// The tenant's binding. A tenant on a binding host whose database `npm run deploy` bound on this
/// Worker as hot ([`BindingName::hot`]) is read through that binding, without the hop to its
/// host. A routed tenant that is active but unbound is a server-side inconsistency (a deploy that
/// dropped tenant bindings, or one not yet live): 503, logged, and a bindings reconcile is started
/// right away (see [`heal`]).
fn binding(env: &Env, slug: &TenantSlug, record: &TenantRecord) -> Result<D1Database, ApiError> {
    let host = record.host.as_deref();
    if host.is_some() {
        if let Some(db) =
            record.database_id.as_deref().and_then(BindingName::hot).and_then(|n| edge::hot_binding(env, &n))
        {
            return Ok(db);
        }
    }
    let name = BindingName::for_tenant(slug);
    edge::tenant_binding(env, Home::of(host), &name).ok_or_else(|| {
        heal::wanted(host);
        ApiError::tenant_unavailable()
            .inspect_log(&format!("tenant {slug} is active but binding {name} is missing; the reconciler restores it"))
    })
}

async fn tenant_info(ctx: &TenantContext) -> Result<Response, ApiError> {
    http::json(
        200,
        &serde_json::json!({ "tenant": ctx.slug().as_str(), "plan": ctx.plan().as_str(), "schema": ctx.schema() }),
    )
}
