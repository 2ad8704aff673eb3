//! The platform admin API on the apex host, under `/v1/`.
//!
//! Authentication: `Authorization: Bearer <ADMIN_TOKEN>` (a Worker secret), compared in constant
//! time. Every change is written to the control plane's audit log.
//!
//! | route | does |
//! |---|---|
//! | `POST /v1/tenants` | create (or resume the same create): 201 when active, 202 + operation otherwise |
//! | `GET /v1/tenants?status=&cursor=&limit=` | list, by slug, paginated |
//! | `GET /v1/tenants/{slug}` | one tenant (and carries an unfinished operation forward) |
//! | `PATCH /v1/tenants/{slug}` | name, plan, `plan_expires_at`, `quotas`, suspend (`status: "suspended"`, `message`) or resume |
//! | `GET /v1/tenants/{slug}/usage?from=&to=` | usage per day and per month, against the quotas |
//! | `GET /v1/usage?month=&limit=&offset=` | the fleet's usage in a month, tenants by API calls |
//! | `DELETE /v1/tenants/{slug}` | delete (backup first): 200 when deleted, 202 + operation otherwise |
//! | `GET /v1/tenants/{slug}/operations` | the tenant's lifecycle operations, newest first |
//! | `GET /v1/tenants/{slug}/audit/verify` | verify the tenant's audit chain (a page), check and move its anchor |
//! | `GET /v1/tenants/{slug}/backup` | the backup taken when the tenant was deleted (a SQL dump) |
//! | `GET/POST /v1/tenants/{slug}/backups` | every backup kept (verified, in R2), newest first / take one now |
//! | `GET /v1/tenants/{slug}/backups/{id}` | one backup's SQL, checked against its SHA-256 |
//! | `POST /v1/tenants/{slug}/restore` | `{"at"}` point in time, `{"backup": id}` from a backup; on a deleted tenant, undelete |
//! | `POST /v1/tenants/{slug}/restore/confirm` | drop the databases the tenant's restores replaced now |
//! | `POST /v1/backups/run` | one pass of the scheduled backups: `{limit?, concurrency?, max_age_seconds?}` |
//! | `POST /v1/migrations/apply` | migrate tenants that are behind: `{after?, limit?, concurrency?}`, returns `next` to continue |
//! | `GET /v1/migrations/status` | tenants per schema version, and the failures |
//! | `GET/POST /v1/roles`, `GET/PATCH/DELETE /v1/roles/{name}` | system roles, synced into every tenant |
//! | `GET/PUT/DELETE /v1/maintenance` | fleet-wide maintenance `{message, until?}` |
//! | `GET/PATCH /v1/settings` | default settings every tenant inherits (`{key: value}`, `null` removes) |
//! | `POST /v1/reconcile` | run the scheduled reconciler now, and report |
//!
//! One file per resource: `tenants` (the registry and the lifecycle's entry points), `roles`,
//! `fleet` (migrations, maintenance, default settings), `backups`, `usage`, `audit` (tenant audit
//! chains). This file is the router and the admin token check. It may use the lifecycle and the
//! fleet passes, the storage layer, `http` and `core`.

mod audit;
mod backups;
mod fleet;
mod roles;
mod tenants;
mod usage;

use serde_json::json;
use worker::{Env, Request, Response};

pub use fleet::Maintenance;
pub use tenants::{operation_view, tenant_view, validate_create, CreateRequest};

use super::lifecycle::Lifecycle;
use crate::core::slug::TenantSlug;
use crate::edge;
use crate::http::{self, ApiError, Method};
use fleet::{
    fleet_maintenance_clear, fleet_maintenance_get, fleet_maintenance_set, migrations_apply, settings_get,
    settings_patch,
};
use roles::{role_delete, role_get, role_write};
use tenants::{backup, create, delete, get, list, operations, update};

pub async fn handle(req: &Request, env: &Env, path: &str) -> Result<Response, ApiError> {
    authenticate(req, env)?;
    let segments: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    let method = Method::of(req);
    match segments.as_slice() {
        ["tenants"] => match method {
            Method::Post => create(req, env).await,
            Method::Get => list(req, env).await,
            _ => Err(http::method_not_allowed("GET, POST")),
        },
        ["tenants", slug] => {
            let slug = parse_slug(slug)?;
            match method {
                Method::Get => get(env, &slug).await,
                Method::Patch => update(req, env, &slug).await,
                Method::Delete => delete(env, &slug).await,
                _ => Err(http::method_not_allowed("GET, PATCH, DELETE")),
            }
        }
        ["tenants", slug, "operations"] => match method {
            Method::Get => operations(env, &parse_slug(slug)?).await,
            _ => Err(http::method_not_allowed("GET")),
        },
        ["tenants", slug, "audit", "verify"] => match method {
            Method::Get => audit::verify(req, env, &parse_slug(slug)?).await,
            _ => Err(http::method_not_allowed("GET")),
        },
        ["tenants", slug, "backups"] => match method {
            Method::Get => backups::list(env, &parse_slug(slug)?).await,
            Method::Post => backups::take(env, &parse_slug(slug)?).await,
            _ => Err(http::method_not_allowed("GET, POST")),
        },
        ["tenants", slug, "backups", id] => match method {
            Method::Get => backups::download(env, &parse_slug(slug)?, id).await,
            _ => Err(http::method_not_allowed("GET")),
        },
        ["tenants", slug, "usage"] => match method {
            Method::Get => usage::tenant(req, env, &parse_slug(slug)?).await,
            _ => Err(http::method_not_allowed("GET")),
        },
        ["usage"] => match method {
            Method::Get => usage::fleet(req, env).await,
            _ => Err(http::method_not_allowed("GET")),
        },
        ["tenants", slug, "restore"] => match method {
            Method::Post => backups::restore(req, env, &parse_slug(slug)?).await,
            _ => Err(http::method_not_allowed("POST")),
        },
        ["tenants", slug, "restore", "confirm"] => match method {
            Method::Post => backups::confirm(env, &parse_slug(slug)?).await,
            _ => Err(http::method_not_allowed("POST")),
        },
        ["backups", "run"] => match method {
            Method::Post => backups::run(req, env).await,
            _ => Err(http::method_not_allowed("POST")),
        },
        ["tenants", slug, "backup"] => match method {
            Method::Get => backup(env, &parse_slug(slug)?).await,
            _ => Err(http::method_not_allowed("GET")),
        },
        ["migrations", "apply"] => match method {
            Method::Post => migrations_apply(req, env).await,
            _ => Err(http::method_not_allowed("POST")),
        },
        ["migrations", "status"] => match method {
            Method::Get => http::json(200, &super::fleet::status(&edge::control(env)?).await?),
            _ => Err(http::method_not_allowed("GET")),
        },
        ["roles"] => match method {
            Method::Get => http::json(200, &json!({ "roles": edge::control(env)?.roles().await? })),
            Method::Post => role_write(req, env, None).await,
            _ => Err(http::method_not_allowed("GET, POST")),
        },
        ["roles", name] => match method {
            Method::Get => role_get(env, name).await,
            Method::Patch => role_write(req, env, Some(name)).await,
            Method::Delete => role_delete(env, name).await,
            _ => Err(http::method_not_allowed("GET, PATCH, DELETE")),
        },
        ["maintenance"] => match method {
            Method::Get => fleet_maintenance_get(env).await,
            Method::Put => fleet_maintenance_set(req, env).await,
            Method::Delete => fleet_maintenance_clear(env).await,
            _ => Err(http::method_not_allowed("GET, PUT, DELETE")),
        },
        ["settings"] => match method {
            Method::Get => settings_get(env).await,
            Method::Patch => settings_patch(req, env).await,
            _ => Err(http::method_not_allowed("GET, PATCH")),
        },
        ["reconcile"] => match method {
            Method::Post => http::json(200, &Lifecycle::from_env(env)?.reconcile_all().await?),
            _ => Err(http::method_not_allowed("POST")),
        },
        _ => Err(http::route_not_found()),
    }
}

fn authenticate(req: &Request, env: &Env) -> Result<(), ApiError> {
    let expected = edge::config(env)?.admin_token.clone().ok_or_else(|| {
        ApiError::Unavailable {
            code: "admin_not_configured",
            message: "the admin API is not configured".into(),
            retry_after: 60,
        }
        .inspect_log("secret ADMIN_TOKEN is not set")
    })?;
    // The tenant API's parser: the scheme in any letter case (RFC 9110 §11.1).
    let header = req.headers().get("Authorization").ok().flatten();
    match crate::core::token::bearer(header.as_deref()) {
        Ok(token) if crate::crypto::secrets_equal(token, expected.expose()) => Ok(()),
        _ => Err(ApiError::Unauthorized { message: "a valid admin bearer token is required".into() }),
    }
}

fn parse_slug(raw: &str) -> Result<TenantSlug, ApiError> {
    // An invalid slug names no tenant.
    TenantSlug::parse(raw).map_err(|_| not_found(raw))
}

fn not_found(slug: &str) -> ApiError {
    ApiError::not_found(
        "tenant_not_found",
        format!("there is no tenant `{}`", slug.chars().take(60).collect::<String>()),
    )
}
