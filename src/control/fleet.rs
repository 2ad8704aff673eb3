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

use super::store;
use crate::core::migrations;
use crate::core::names::BindingName;
use crate::core::roles::RoleSpec;
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

/// What every tenant should have of the platform's entities.
pub struct Entities {
    pub version: i64,
    pub roles: Vec<RoleSpec>,
}

impl Entities {
    pub async fn load(db: &D1Database) -> Result<Self, ApiError> {
        Ok(Self { version: store::entity_version(db).await?, roles: store::roles(db).await? })
    }
}

/// Migrates (and syncs entities into) up to `limit` tenants that are behind, after slug `after`.
pub async fn migrate_pass(
    env: &Env,
    db: &D1Database,
    after: &str,
    limit: u32,
    concurrency: usize,
) -> Result<PassReport, ApiError> {
    let latest = migrations::TENANT.len();
    let entities = Entities::load(db).await?;
    let rows: Vec<Behind> = db
        .prepare(
            "SELECT slug FROM tenants WHERE status IN ('active', 'suspended') AND slug > ?1 \
             AND (schema_version < ?2 OR migration_error IS NOT NULL OR synced_version < ?4 OR sync_error IS NOT NULL) \
             ORDER BY slug LIMIT ?3",
        )
        .bind(&[
            JsValue::from_str(after),
            JsValue::from(latest as u32),
            JsValue::from(limit + 1),
            JsValue::from(entities.version as f64),
        ])?
        .all()
        .await?
        .results()?;
    let more = rows.len() > limit as usize;
    let slugs: Vec<String> = rows.into_iter().take(limit as usize).map(|r| r.slug).collect();
    let next = if more { slugs.last().cloned() } else { None };
    let outcomes: Vec<TenantOutcome> = stream::iter(slugs.iter().map(|slug| tend_one(env, db, slug, &entities)))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let processed = outcomes.len();
    let (failed, migrated): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(|o| o.error.is_some());
    Ok(PassReport { latest, processed, migrated, failed, next })
}

/// Migrates one tenant, then (when its schema is current) syncs the platform's entities into it.
async fn tend_one(env: &Env, db: &D1Database, slug: &str, entities: &Entities) -> TenantOutcome {
    let bound = TenantSlug::parse(slug).ok().and_then(|parsed| env.d1(BindingName::for_tenant(&parsed).as_str()).ok());
    let result = match &bound {
        None => Err(migrate::MigrateError {
            version: 0,
            migration: String::new(),
            message: "the tenant is not bound".into(),
        }),
        Some(tenant_db) => migrate::apply_pending(tenant_db).await,
    };
    if let (Ok(_), Some(tenant_db)) = (&result, &bound) {
        let error = sync_entities(tenant_db, entities).await.err();
        record_sync(db, slug, entities.version, error.as_deref()).await;
    }
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

/// Makes the tenant's system roles exactly the platform's, in one batch (one transaction).
///
/// Nothing a tenant made is lost to a platform change: a tenant's own role that has a platform
/// role's name stays the tenant's (the upsert only updates a row that is a system role), so that
/// tenant simply does not get the platform role of that name, and removing the platform role
/// later deletes only system rows. The tenant's role wins in its own database.
pub async fn sync_entities(tenant_db: &D1Database, entities: &Entities) -> Result<(), String> {
    let names = serde_json::to_string(&entities.roles.iter().map(|r| &r.name).collect::<Vec<_>>())
        .unwrap_or_else(|_| "[]".into());
    let mut batch = vec![tenant_db
        .prepare("DELETE FROM roles WHERE is_system = 1 AND name NOT IN (SELECT value FROM json_each(?1))")
        .bind(&[JsValue::from_str(&names)])
        .map_err(|e| e.to_string())?];
    for role in &entities.roles {
        let permissions = serde_json::to_string(&role.permissions).unwrap_or_else(|_| "[]".into());
        batch.push(
            tenant_db
                .prepare(
                    "INSERT INTO roles (name, description, permissions, is_system) VALUES (?1, ?2, ?3, 1) ON CONFLICT (name) DO UPDATE SET \
                     description = excluded.description, permissions = excluded.permissions, \
                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE roles.is_system = 1",
                )
                .bind(&[JsValue::from_str(&role.name), JsValue::from_str(&role.description), JsValue::from_str(&permissions)])
                .map_err(|e| e.to_string())?,
        );
    }
    tenant_db.batch(batch).await.map(drop).map_err(|e| migrate::message(&e))
}

/// Records a tenant's sync outcome; a failure stays until a later pass succeeds.
pub async fn record_sync(db: &D1Database, slug: &str, version: i64, error: Option<&str>) {
    let statement = match error {
        None => db
            .prepare("UPDATE tenants SET synced_version = ?2, sync_error = NULL WHERE slug = ?1")
            .bind(&[JsValue::from_str(slug), JsValue::from(version as f64)]),
        Some(e) => db
            .prepare("UPDATE tenants SET sync_error = ?2 WHERE slug = ?1")
            .bind(&[JsValue::from_str(slug), JsValue::from_str(e)]),
    };
    if let Err(e) = async { statement?.run().await }.await {
        worker::console_error!("fleet: recording {slug}'s sync outcome failed: {e}");
    }
    if let Some(e) = error {
        worker::console_warn!("fleet: syncing roles into {slug} failed: {e}");
    }
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
    #[derive(Deserialize, Serialize)]
    struct SyncFailure {
        slug: String,
        sync_error: String,
    }
    let sync_failures: Vec<SyncFailure> = db
        .prepare("SELECT slug, sync_error FROM tenants WHERE status IN ('active', 'suspended') AND sync_error IS NOT NULL ORDER BY slug LIMIT 500")
        .all()
        .await?
        .results()?;
    let entity_version = store::entity_version(db).await?;
    let behind: i64 = counts.iter().filter(|c| c.schema_version < latest as i64).map(|c| c.n).sum();
    let by_version: serde_json::Map<String, Value> =
        counts.iter().map(|c| (c.schema_version.to_string(), json!(c.n))).collect();
    Ok(json!({
        "latest": latest,
        "migrations": migrations::TENANT.iter().map(|m| m.name).collect::<Vec<_>>(),
        "tenants_by_version": by_version,
        "behind": behind,
        "failures": failures,
        "entities": { "version": entity_version, "sync_failures": sync_failures },
    }))
}
