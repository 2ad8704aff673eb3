//! The tenant-facing API on `{slug}.{APEX}`, served from that tenant's own D1 database only.
//!
//! [`TenantDb::open`] is the one way to get a tenant's database: it looks the binding up by the
//! name derived from the routed slug, then checks that the database is stamped with that same
//! slug and carries exactly this Worker's tenant schema before any handler runs.
//!
//! This is the first slice: there is no authentication yet, and the tenant registry is not
//! consulted (a tenant exists when its binding does). The data plane issue adds both.

use serde::{Deserialize, Serialize};
use worker::{D1Database, Env, Method, Request, Response};

use crate::core::migrations::{self, LedgerState};
use crate::core::names::BindingName;
use crate::core::slug::TenantSlug;
use crate::http::{self, ApiError};

/// Seconds a client should wait before retrying when the tenant's database is not ready.
const RETRY_AFTER_SECONDS: u32 = 5;

pub async fn handle(req: &Request, env: &Env, slug: TenantSlug) -> Result<Response, ApiError> {
    let path = req.path();
    let method = req.method();
    let allow = match path.as_str() {
        "/api/tenant" | "/api/projects" => "GET",
        _ => return Err(http::route_not_found()),
    };
    if method != Method::Get {
        return Err(http::method_not_allowed(allow));
    }
    let tenant = TenantDb::open(env, slug).await?;
    match path.as_str() {
        "/api/tenant" => tenant_info(&tenant),
        _ => list_projects(&tenant, req).await,
    }
}

/// A tenant's database, checked to belong to that tenant and to be at this Worker's schema.
pub struct TenantDb {
    slug: TenantSlug,
    db: D1Database,
    applied: Vec<String>,
}

#[derive(Deserialize)]
struct Value {
    value: String,
}

#[derive(Deserialize)]
struct Name {
    name: String,
}

impl TenantDb {
    pub async fn open(env: &Env, slug: TenantSlug) -> Result<Self, ApiError> {
        let binding = BindingName::for_tenant(&slug);
        let db = env
            .d1(binding.as_str())
            .map_err(|_| ApiError::not_found("tenant_not_found", format!("there is no tenant `{slug}`")))?;
        let not_ready = |detail: String| {
            worker::console_error!("tenant {slug}: database not ready: {detail}");
            ApiError::Unavailable {
                code: "tenant_unavailable",
                message: "this tenant's database is not ready; retry shortly".into(),
                retry_after: RETRY_AFTER_SECONDS,
            }
        };
        // One round trip: the stamp and the ledger.
        let results = db
            .batch(vec![
                db.prepare("SELECT value FROM tenant_meta WHERE key = 'slug'"),
                db.prepare(format!("SELECT name FROM {} ORDER BY id", migrations::LEDGER_TABLE)),
            ])
            .await
            .map_err(|e| not_ready(e.to_string()))?;
        let [stamp, ledger] = results.as_slice() else {
            return Err(not_ready(format!("batch returned {} results", results.len())));
        };
        let stamp = stamp.results::<Value>().map_err(|e| not_ready(e.to_string()))?;
        let applied: Vec<String> =
            ledger.results::<Name>().map_err(|e| not_ready(e.to_string()))?.into_iter().map(|r| r.name).collect();

        if stamp.first().map(|s| s.value.as_str()) != Some(slug.as_str()) {
            let found = stamp.first().map_or("<none>", |s| s.value.as_str());
            return Err(not_ready(format!(
                "SECURITY: binding {binding} holds a database stamped {found:?}; refusing to serve"
            )));
        }
        match migrations::compare(migrations::TENANT, &applied) {
            LedgerState::Current => Ok(Self { slug, db, applied }),
            LedgerState::Behind { pending } => Err(ApiError::Unavailable {
                code: "tenant_migrating",
                message: "this tenant's database is being brought up to date; retry shortly".into(),
                retry_after: RETRY_AFTER_SECONDS,
            })
            .inspect_err(|_| worker::console_warn!("tenant {}: pending migrations {pending:?}", slug)),
            LedgerState::Diverged { unknown } => {
                Err(not_ready(format!("ledger has migrations this Worker does not know: {unknown:?}")))
            }
        }
    }

    pub fn slug(&self) -> &TenantSlug {
        &self.slug
    }

    pub fn db(&self) -> &D1Database {
        &self.db
    }
}

#[derive(Serialize)]
struct TenantInfo<'a> {
    tenant: &'a str,
    schema: &'a [String],
}

fn tenant_info(tenant: &TenantDb) -> Result<Response, ApiError> {
    http::json(200, &TenantInfo { tenant: tenant.slug().as_str(), schema: &tenant.applied })
}

#[derive(Serialize, Deserialize)]
struct Project {
    id: i64,
    name: String,
    description: String,
    created_at: String,
    updated_at: String,
}

/// `GET /api/projects?limit=N`: the tenant's projects, oldest first.
async fn list_projects(tenant: &TenantDb, req: &Request) -> Result<Response, ApiError> {
    let url = req.url()?;
    let limit = match url.query_pairs().find(|(k, _)| k == "limit") {
        None => 50,
        Some((_, v)) => {
            v.parse::<u32>().ok().filter(|n| (1..=100).contains(n)).ok_or_else(|| ApiError::BadRequest {
                code: "invalid_parameter",
                message: "limit must be a whole number from 1 to 100".into(),
            })?
        }
    };
    let projects = tenant
        .db()
        .prepare("SELECT id, name, description, created_at, updated_at FROM projects ORDER BY id LIMIT ?1")
        .bind(&[limit.into()])?
        .all()
        .await?
        .results::<Project>()?;
    http::json(200, &serde_json::json!({ "tenant": tenant.slug().as_str(), "projects": projects }))
}
