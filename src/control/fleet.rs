//! Fleet operations: bringing every tenant database to this Worker's schema.
//!
//! A fan-out pass walks the tenants that are behind (by slug, from a cursor) and migrates each
//! through its binding (`tenant::migrate`), `concurrency` at a time. One tenant's failure is
//! recorded on its row (`migration_error`) and does not stop the others. A call handles at most
//! `limit` tenants (a Worker invocation has a bounded number of D1 queries) and returns the cursor
//! to continue from, so a pass over any number of tenants is a loop of calls, and a pass cut short
//! is resumed by calling again.

use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use wasm_bindgen::JsValue;
use worker::{D1Database, Env};

use crate::core::migrations;
use crate::core::names::BindingName;
use crate::core::slug::TenantSlug;
use crate::http::ApiError;
use crate::tenant::migrate;

#[derive(Deserialize)]
struct Behind {
    slug: String,
}

/// One tenant's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct TenantOutcome {
    pub slug: String,
    pub version: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PassReport {
    pub latest: usize,
    pub processed: usize,
    pub migrated: Vec<TenantOutcome>,
    pub failed: Vec<TenantOutcome>,
    /// Give this back as `after` to continue the pass; `None` when the pass is complete.
    pub next: Option<String>,
}

/// Migrates up to `limit` tenants that are behind, after slug `after`.
pub async fn migrate_pass(
    env: &Env,
    db: &D1Database,
    after: &str,
    limit: u32,
    concurrency: usize,
) -> Result<PassReport, ApiError> {
    let latest = migrations::TENANT.len();
    let rows: Vec<Behind> = db
        .prepare(
            "SELECT slug FROM tenants WHERE status IN ('active', 'suspended') AND slug > ?1 \
             AND (schema_version < ?2 OR migration_error IS NOT NULL) ORDER BY slug LIMIT ?3",
        )
        .bind(&[JsValue::from_str(after), JsValue::from(latest as u32), JsValue::from(limit + 1)])?
        .all()
        .await?
        .results()?;
    let more = rows.len() > limit as usize;
    let slugs: Vec<String> = rows.into_iter().take(limit as usize).map(|r| r.slug).collect();
    let next = if more { slugs.last().cloned() } else { None };
    let outcomes: Vec<TenantOutcome> = stream::iter(slugs.iter().map(|slug| migrate_one(env, db, slug)))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let processed = outcomes.len();
    let (failed, migrated): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(|o| o.error.is_some());
    Ok(PassReport { latest, processed, migrated, failed, next })
}

async fn migrate_one(env: &Env, db: &D1Database, slug: &str) -> TenantOutcome {
    let result = match TenantSlug::parse(slug) {
        Err(e) => Err(migrate::MigrateError { version: 0, migration: String::new(), message: e.to_string() }),
        Ok(parsed) => match env.d1(BindingName::for_tenant(&parsed).as_str()) {
            Err(_) => Err(migrate::MigrateError {
                version: 0,
                migration: String::new(),
                message: "the tenant is not bound".into(),
            }),
            Ok(tenant_db) => migrate::apply_pending(&tenant_db).await,
        },
    };
    let (version, error) = match result {
        Ok(v) => (v, None),
        Err(e) => (e.version, Some(e.to_string())),
    };
    // The version only ever moves forward here; an unknown current version (not bound) keeps it.
    let record = db
        .prepare(
            "UPDATE tenants SET schema_version = MAX(schema_version, ?2), migration_error = ?3, \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE slug = ?1",
        )
        .bind(&[
            JsValue::from_str(slug),
            JsValue::from(version as u32),
            error.as_deref().map_or(JsValue::NULL, JsValue::from_str),
        ]);
    if let Err(e) = async { record?.run().await }.await {
        worker::console_error!("fleet: recording {slug}'s migration outcome failed: {e}");
    }
    if let Some(e) = &error {
        worker::console_warn!("fleet: tenant {slug} stays at version {version}: {e}");
    }
    TenantOutcome { slug: slug.to_owned(), version, error }
}

#[derive(Deserialize)]
struct VersionCount {
    schema_version: i64,
    n: i64,
}

#[derive(Deserialize, Serialize)]
struct Failure {
    slug: String,
    schema_version: i64,
    migration_error: String,
}

/// Counts per schema version of the tenants in service, and the failures.
pub async fn status(db: &D1Database) -> Result<Value, ApiError> {
    let latest = migrations::TENANT.len();
    let counts: Vec<VersionCount> = db
        .prepare("SELECT schema_version, count(*) AS n FROM tenants WHERE status IN ('active', 'suspended') GROUP BY schema_version ORDER BY schema_version")
        .all()
        .await?
        .results()?;
    let failures: Vec<Failure> = db
        .prepare("SELECT slug, schema_version, migration_error FROM tenants WHERE status IN ('active', 'suspended') AND migration_error IS NOT NULL ORDER BY slug LIMIT 500")
        .all()
        .await?
        .results()?;
    let behind: i64 = counts.iter().filter(|c| c.schema_version < latest as i64).map(|c| c.n).sum();
    let by_version: serde_json::Map<String, Value> =
        counts.iter().map(|c| (c.schema_version.to_string(), json!(c.n))).collect();
    Ok(json!({
        "latest": latest,
        "migrations": migrations::TENANT.iter().map(|m| m.name).collect::<Vec<_>>(),
        "tenants_by_version": by_version,
        "behind": behind,
        "failures": failures,
    }))
}
