//! Fleet operations: bringing every tenant database to this Worker's schema and the platform's
//! entities.
//!
//! A fan-out pass walks the tenants that are behind (by slug, from a cursor) and migrates each
//! through its binding (the one migration runner, `store::migrate`), `concurrency` at a time. One
//! tenant's failure is recorded on its row (`migration_error`) and does not stop the others. A
//! call handles at most `limit` tenants (a Worker invocation has a bounded number of D1 queries)
//! and returns the cursor to continue from, so a pass over any number of tenants is a loop of
//! calls, and a pass cut short is resumed by calling again.

use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};

use crate::core::migrations;
use crate::core::names::BindingName;
use crate::core::slug::TenantSlug;
use crate::store::control::{ControlStore, Entities};
use crate::store::migrate::{self, MigrateError};
use crate::store::ports::{Bindings, Home};
use crate::store::sql::{Sql, SqlError};
use crate::store::tenant_db;

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

/// Migrates (and syncs entities into) up to `limit` tenants that are behind, after slug `after`.
pub async fn migrate_pass<C: Sql, B: Bindings>(
    store: &ControlStore<C>,
    bindings: &B,
    after: &str,
    limit: u32,
    concurrency: usize,
) -> Result<PassReport, SqlError> {
    let latest = migrations::TENANT.len();
    let entities = store.entities().await?;
    let mut slugs = store.tenants_behind(after, latest, entities.version, limit + 1).await?;
    let more = slugs.len() > limit as usize;
    slugs.truncate(limit as usize);
    let next = if more { slugs.last().map(|(slug, _)| slug.clone()) } else { None };
    let outcomes: Vec<TenantOutcome> = stream::iter(
        slugs.iter().map(|(slug, host)| tend_one(store, bindings, slug, Home::of(host.as_deref()), &entities)),
    )
    .buffer_unordered(concurrency.max(1))
    .collect()
    .await;
    let processed = outcomes.len();
    let (failed, migrated): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(|o| o.error.is_some());
    Ok(PassReport { latest, processed, migrated, failed, next })
}

/// Migrates one tenant, then (when its schema is current) syncs the platform's entities into it.
async fn tend_one<C: Sql, B: Bindings>(
    store: &ControlStore<C>,
    bindings: &B,
    slug: &str,
    home: Home<'_>,
    entities: &Entities,
) -> TenantOutcome {
    let bound =
        TenantSlug::parse(slug).ok().and_then(|parsed| bindings.database(home, &BindingName::for_tenant(&parsed)));
    let result = match &bound {
        None => Err(MigrateError {
            version: 0,
            migration: String::new(),
            message: "the tenant is not bound".into(),
            unreachable: true,
            not_bound: true,
        }),
        Some(db) => migrate::apply_pending(db, migrations::TENANT).await,
    };
    if let (Ok(_), Some(db)) = (&result, &bound) {
        let error = tenant_db::sync_roles(db, &entities.roles).await.err().map(|e| e.message);
        if let Err(e) = store.record_sync(slug, entities.version, error.as_deref()).await {
            crate::log::error(&format!("fleet: recording {slug}'s sync outcome failed: {e}"));
        }
        if let Some(e) = error {
            crate::log::warn(&format!("fleet: syncing roles into {slug} failed: {e}"));
        }
    }
    let (version, error) = match result {
        Ok(v) => (v, None),
        Err(e) => (e.version, Some(e.to_string())),
    };
    // The version only ever moves forward; an unknown current version (not bound) keeps it.
    if let Err(e) = store.record_migration(slug, version, error.as_deref()).await {
        crate::log::error(&format!("fleet: recording {slug}'s migration outcome failed: {e}"));
    }
    if let Some(e) = &error {
        crate::log::warn(&format!("fleet: tenant {slug} stays at version {version}: {e}"));
    }
    TenantOutcome { slug: slug.to_owned(), version, error }
}

/// Counts per schema version of the tenants in service, and the failures.
pub async fn status<C: Sql>(store: &ControlStore<C>) -> Result<Value, SqlError> {
    let latest = migrations::TENANT.len();
    let counts = store.version_counts().await?;
    let failures = store.migration_failures().await?;
    let sync_failures = store.sync_failures().await?;
    let entity_version = store.entity_version().await?;
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
