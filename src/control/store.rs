//! The control plane's tables, read and written through its D1 binding.
//!
//! Status changes are compare-and-set (`WHERE status IN (...)`), so two invocations racing on
//! one tenant cannot both win; the caller learns from the returned flag whether it did.

use serde::{Deserialize, Serialize};
use wasm_bindgen::JsValue;
use worker::{D1Database, Result};

use crate::core::lifecycle::{OperationKind, Step, TenantStatus};

/// A row of `tenants`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantRow {
    pub slug: String,
    pub display_name: String,
    pub plan: String,
    pub status: String,
    pub database_name: String,
    pub database_id: Option<String>,
    pub binding_name: String,
    pub schema_version: i64,
    pub status_message: Option<String>,
    pub backup_location: Option<String>,
    pub backup_bytes: Option<i64>,
    pub backup_sha256: Option<String>,
    pub last_error: Option<String>,
    pub bind_wanted: i64,
    pub create_fingerprint: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub deleted_at: Option<String>,
    pub maintenance_message: Option<String>,
    pub maintenance_until: Option<String>,
}

impl TenantRow {
    pub fn status(&self) -> TenantStatus {
        // The CHECK constraint keeps the column to the six known values.
        self.status.parse().unwrap_or(TenantStatus::Failed)
    }
}

/// A row of `operations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperationRow {
    pub id: String,
    pub tenant_slug: String,
    pub kind: String,
    pub state: String,
    pub steps: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub input: String,
    pub next_step: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

impl OperationRow {
    pub fn kind(&self) -> Option<OperationKind> {
        self.kind.parse().ok()
    }
    pub fn done_steps(&self) -> Vec<Step> {
        serde_json::from_str(&self.steps).unwrap_or_default()
    }
}

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
const TENANT_COLUMNS: &str =
    "slug, display_name, plan, status, database_name, database_id, binding_name, schema_version, \
     status_message, backup_location, backup_bytes, backup_sha256, last_error, bind_wanted, create_fingerprint, \
     created_at, updated_at, deleted_at, maintenance_message, maintenance_until";

fn s(value: &str) -> JsValue {
    JsValue::from_str(value)
}

fn opt(value: Option<&str>) -> JsValue {
    value.map_or(JsValue::NULL, JsValue::from_str)
}

async fn changed(db: &D1Database, sql: &str, args: &[JsValue]) -> Result<bool> {
    let result = db.prepare(sql).bind(args)?.run().await?;
    Ok(result.meta()?.and_then(|m| m.changes).unwrap_or(0) > 0)
}

pub async fn get_tenant(db: &D1Database, slug: &str) -> Result<Option<TenantRow>> {
    db.prepare(format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE slug = ?1")).bind(&[s(slug)])?.first(None).await
}

/// Tenants ordered by slug, after `after`, optionally of one status.
pub async fn list_tenants(
    db: &D1Database,
    status: Option<TenantStatus>,
    after: &str,
    limit: u32,
) -> Result<Vec<TenantRow>> {
    db.prepare(format!(
        "SELECT {TENANT_COLUMNS} FROM tenants WHERE slug > ?1 AND (?2 IS NULL OR status = ?2) ORDER BY slug LIMIT ?3"
    ))
    .bind(&[s(after), opt(status.map(|st| st.as_str())), JsValue::from(limit)])?
    .all()
    .await?
    .results()
}

/// Every tenant whose binding should exist (and has a database to bind).
pub async fn tenants_to_bind(db: &D1Database) -> Result<Vec<TenantRow>> {
    db.prepare(format!(
        "SELECT {TENANT_COLUMNS} FROM tenants WHERE bind_wanted = 1 AND database_id IS NOT NULL ORDER BY slug"
    ))
    .all()
    .await?
    .results()
}

/// Tenants that are not settled yet, or failed, for the reconciler.
pub async fn tenants_in(db: &D1Database, statuses: &[TenantStatus], limit: u32) -> Result<Vec<TenantRow>> {
    let list = statuses.iter().map(|st| format!("'{}'", st.as_str())).collect::<Vec<_>>().join(", ");
    db.prepare(format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE status IN ({list}) ORDER BY updated_at LIMIT ?1"))
        .bind(&[JsValue::from(limit)])?
        .all()
        .await?
        .results()
}

/// Database names every non-deleted tenant owns (for the orphan scan).
pub async fn owned_database_names(db: &D1Database) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Name {
        database_name: String,
    }
    let rows: Vec<Name> =
        db.prepare("SELECT database_name FROM tenants WHERE status != 'deleted'").all().await?.results()?;
    Ok(rows.into_iter().map(|r| r.database_name).collect())
}

pub struct NewTenant<'a> {
    pub slug: &'a str,
    pub display_name: &'a str,
    pub plan: &'a str,
    pub database_name: &'a str,
    pub binding_name: &'a str,
    pub fingerprint: &'a str,
}

/// Inserts a `provisioning` row; `false` when the slug is taken.
pub async fn insert_tenant(db: &D1Database, t: &NewTenant<'_>) -> Result<bool> {
    changed(
        db,
        "INSERT INTO tenants (slug, display_name, plan, status, database_name, binding_name, create_fingerprint) \
         VALUES (?1, ?2, ?3, 'provisioning', ?4, ?5, ?6) ON CONFLICT (slug) DO NOTHING",
        &[s(t.slug), s(t.display_name), s(t.plan), s(t.database_name), s(t.binding_name), s(t.fingerprint)],
    )
    .await
}

/// Replaces a deleted tenant's tombstone with a fresh `provisioning` row (explicit recreate).
pub async fn replace_tombstone(db: &D1Database, t: &NewTenant<'_>) -> Result<bool> {
    changed(
        db,
        &format!(
            "UPDATE tenants SET display_name = ?2, plan = ?3, status = 'provisioning', database_id = NULL, \
             schema_version = 0, status_message = NULL, backup_location = NULL, backup_bytes = NULL, \
             backup_sha256 = NULL, last_error = NULL, bind_wanted = 0, create_fingerprint = ?4, deleted_at = NULL, \
             created_at = {NOW}, updated_at = {NOW} WHERE slug = ?1 AND status = 'deleted'"
        ),
        &[s(t.slug), s(t.display_name), s(t.plan), s(t.fingerprint)],
    )
    .await
}

/// Compare-and-set of the status: only from one of `from`. `true` when this call moved it.
pub async fn set_status(
    db: &D1Database,
    slug: &str,
    from: &[TenantStatus],
    to: TenantStatus,
    message: Option<&str>,
) -> Result<bool> {
    let from = from.iter().map(|st| format!("'{}'", st.as_str())).collect::<Vec<_>>().join(", ");
    let deleted_at = if to == TenantStatus::Deleted { NOW } else { "deleted_at" };
    changed(
        db,
        &format!(
            "UPDATE tenants SET status = ?2, status_message = ?3, updated_at = {NOW}, deleted_at = {deleted_at} \
             WHERE slug = ?1 AND status IN ({from})"
        ),
        &[s(slug), s(to.as_str()), opt(message)],
    )
    .await
}

pub async fn set_database(db: &D1Database, slug: &str, database_id: &str) -> Result<()> {
    changed(
        db,
        &format!("UPDATE tenants SET database_id = ?2, updated_at = {NOW} WHERE slug = ?1"),
        &[s(slug), s(database_id)],
    )
    .await
    .map(drop)
}

pub async fn set_bind_wanted(db: &D1Database, slug: &str, wanted: bool) -> Result<()> {
    changed(
        db,
        &format!("UPDATE tenants SET bind_wanted = ?2, updated_at = {NOW} WHERE slug = ?1"),
        &[s(slug), JsValue::from(i32::from(wanted))],
    )
    .await
    .map(drop)
}

/// Sets `bind_wanted` only while the tenant is in `status` (a create that lost a race with a
/// delete must not bind again).
pub async fn set_bind_wanted_if(db: &D1Database, slug: &str, wanted: bool, status: TenantStatus) -> Result<bool> {
    changed(
        db,
        &format!("UPDATE tenants SET bind_wanted = ?2, updated_at = {NOW} WHERE slug = ?1 AND status = ?3"),
        &[s(slug), JsValue::from(i32::from(wanted)), s(status.as_str())],
    )
    .await
}

pub async fn set_schema_version(db: &D1Database, slug: &str, version: usize) -> Result<()> {
    changed(
        db,
        &format!("UPDATE tenants SET schema_version = ?2, updated_at = {NOW} WHERE slug = ?1"),
        &[s(slug), JsValue::from(version as u32)],
    )
    .await
    .map(drop)
}

pub async fn set_error(db: &D1Database, slug: &str, error: Option<&str>) -> Result<()> {
    changed(
        db,
        &format!("UPDATE tenants SET last_error = ?2, updated_at = {NOW} WHERE slug = ?1"),
        &[s(slug), opt(error)],
    )
    .await
    .map(drop)
}

pub async fn set_backup(db: &D1Database, slug: &str, location: &str, bytes: usize, sha256: &str) -> Result<()> {
    changed(
        db,
        &format!(
            "UPDATE tenants SET backup_location = ?2, backup_bytes = ?3, backup_sha256 = ?4, updated_at = {NOW} WHERE slug = ?1"
        ),
        &[s(slug), s(location), JsValue::from(bytes as f64), s(sha256)],
    )
    .await
    .map(drop)
}

pub async fn update_details(db: &D1Database, slug: &str, name: Option<&str>, plan: Option<&str>) -> Result<()> {
    changed(
        db,
        &format!(
            "UPDATE tenants SET display_name = COALESCE(?2, display_name), plan = COALESCE(?3, plan), updated_at = {NOW} \
             WHERE slug = ?1"
        ),
        &[s(slug), opt(name), opt(plan)],
    )
    .await
    .map(drop)
}

pub async fn set_maintenance(db: &D1Database, slug: &str, maintenance: Option<(&str, Option<&str>)>) -> Result<()> {
    changed(
        db,
        &format!(
            "UPDATE tenants SET maintenance_message = ?2, maintenance_until = ?3, updated_at = {NOW} WHERE slug = ?1"
        ),
        &[s(slug), opt(maintenance.map(|m| m.0)), opt(maintenance.and_then(|m| m.1))],
    )
    .await
    .map(drop)
}

// --- platform state and settings defaults ----------------------------------------------------

pub async fn platform_value(db: &D1Database, key: &str) -> Result<Option<String>> {
    #[derive(Deserialize)]
    struct V {
        value: String,
    }
    Ok(db
        .prepare("SELECT value FROM platform WHERE key = ?1")
        .bind(&[s(key)])?
        .first::<V>(None)
        .await?
        .map(|v| v.value))
}

/// Sets (or with `None` removes) a platform value.
pub async fn set_platform_value(db: &D1Database, key: &str, value: Option<&str>) -> Result<()> {
    match value {
        Some(v) => changed(
            db,
            "INSERT INTO platform (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[s(key), s(v)],
        )
        .await
        .map(drop),
        None => changed(db, "DELETE FROM platform WHERE key = ?1", &[s(key)]).await.map(drop),
    }
}

/// The default settings, `{key: value}`.
pub async fn settings_defaults(db: &D1Database) -> Result<serde_json::Map<String, serde_json::Value>> {
    #[derive(Deserialize)]
    struct Row {
        key: String,
        value: String,
    }
    let rows: Vec<Row> = db.prepare("SELECT key, value FROM settings_defaults ORDER BY key").all().await?.results()?;
    Ok(rows.into_iter().map(|r| (r.key, serde_json::from_str(&r.value).unwrap_or(serde_json::Value::Null))).collect())
}

/// Applies `(key, Some(json))` upserts and `(key, None)` removals in one batch.
pub async fn set_settings_defaults(db: &D1Database, changes: &[(String, Option<String>)]) -> Result<()> {
    let mut batch = Vec::new();
    for (key, value) in changes {
        batch.push(match value {
            Some(v) => db
                .prepare(format!(
                    "INSERT INTO settings_defaults (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = {NOW}"
                ))
                .bind(&[s(key), s(v)])?,
            None => db.prepare("DELETE FROM settings_defaults WHERE key = ?1").bind(&[s(key)])?,
        });
    }
    db.batch(batch).await.map(drop)
}

// --- system roles -------------------------------------------------------------------------

/// The platform's roles, by name.
pub async fn roles(db: &D1Database) -> Result<Vec<crate::core::roles::RoleSpec>> {
    #[derive(Deserialize)]
    struct Row {
        name: String,
        description: String,
        permissions: String,
    }
    let rows: Vec<Row> =
        db.prepare("SELECT name, description, permissions FROM roles ORDER BY name").all().await?.results()?;
    Ok(rows
        .into_iter()
        .map(|r| crate::core::roles::RoleSpec {
            name: r.name,
            description: r.description,
            permissions: serde_json::from_str(&r.permissions).unwrap_or_default(),
        })
        .collect())
}

/// The version of the platform's entities (roles); bumped by every change.
pub async fn entity_version(db: &D1Database) -> Result<i64> {
    Ok(platform_value(db, "entity_version").await?.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Upserts (`Some`) or deletes (`None`) a role and bumps the entity version, in one batch.
/// Returns whether a row changed.
pub async fn write_role(db: &D1Database, name: &str, role: Option<(&str, &[String])>) -> Result<bool> {
    let write = match role {
        Some((description, permissions)) => db
            .prepare(format!(
                "INSERT INTO roles (name, description, permissions) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO UPDATE SET \
                 description = excluded.description, permissions = excluded.permissions, updated_at = {NOW}"
            ))
            .bind(&[s(name), s(description), s(&serde_json::to_string(permissions).unwrap_or_else(|_| "[]".into()))])?,
        None => db.prepare("DELETE FROM roles WHERE name = ?1").bind(&[s(name)])?,
    };
    let bump =
        db.prepare("UPDATE platform SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'entity_version'");
    let results = db.batch(vec![write, bump]).await?;
    Ok(results.first().and_then(|r| r.meta().ok().flatten()).and_then(|m| m.changes).unwrap_or(0) > 0)
}

// --- operations ---------------------------------------------------------------------------

const OP_COLUMNS: &str =
    "id, tenant_slug, kind, state, steps, attempts, last_error, input, next_step, created_at, updated_at, finished_at";

/// Opens an operation; `None` when the tenant already has an unfinished one.
pub async fn open_operation(
    db: &D1Database,
    id: &str,
    slug: &str,
    kind: OperationKind,
    input: &str,
) -> Result<Option<OperationRow>> {
    let first = kind.steps()[0];
    let inserted = changed(
        db,
        "INSERT INTO operations (id, tenant_slug, kind, state, input, next_step) VALUES (?1, ?2, ?3, 'pending', ?4, ?5) \
         ON CONFLICT DO NOTHING",
        &[s(id), s(slug), s(kind.as_str()), s(input), s(&step_name(first))],
    )
    .await?;
    if inserted {
        get_operation(db, id).await
    } else {
        Ok(None)
    }
}

pub async fn get_operation(db: &D1Database, id: &str) -> Result<Option<OperationRow>> {
    db.prepare(format!("SELECT {OP_COLUMNS} FROM operations WHERE id = ?1")).bind(&[s(id)])?.first(None).await
}

pub async fn open_operation_of(db: &D1Database, slug: &str) -> Result<Option<OperationRow>> {
    db.prepare(format!(
        "SELECT {OP_COLUMNS} FROM operations WHERE tenant_slug = ?1 AND state IN ('pending', 'running')"
    ))
    .bind(&[s(slug)])?
    .first(None)
    .await
}

pub async fn list_operations(db: &D1Database, slug: &str, limit: u32) -> Result<Vec<OperationRow>> {
    db.prepare(format!(
        "SELECT {OP_COLUMNS} FROM operations WHERE tenant_slug = ?1 ORDER BY created_at DESC, id LIMIT ?2"
    ))
    .bind(&[s(slug), JsValue::from(limit)])?
    .all()
    .await?
    .results()
}

pub async fn unfinished_operations(db: &D1Database, limit: u32) -> Result<Vec<OperationRow>> {
    db.prepare(format!(
        "SELECT {OP_COLUMNS} FROM operations WHERE state IN ('pending', 'running') ORDER BY updated_at LIMIT ?1"
    ))
    .bind(&[JsValue::from(limit)])?
    .all()
    .await?
    .results()
}

pub fn step_name(step: Step) -> String {
    serde_json::to_value(step).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// Records `step` as done and what comes next.
pub async fn record_step(db: &D1Database, op: &OperationRow, done: &[Step], next: Option<Step>) -> Result<()> {
    let steps = serde_json::to_string(done).map_err(|e| worker::Error::RustError(e.to_string()))?;
    changed(
        db,
        &format!(
            "UPDATE operations SET state = 'running', steps = ?2, next_step = ?3, updated_at = {NOW} WHERE id = ?1"
        ),
        &[s(&op.id), s(&steps), opt(next.map(step_name).as_deref())],
    )
    .await
    .map(drop)
}

/// Records a failed attempt; the operation stays open for the next try.
pub async fn record_failure(db: &D1Database, op_id: &str, error: &str) -> Result<()> {
    changed(
        db,
        &format!(
            "UPDATE operations SET state = 'running', attempts = attempts + 1, last_error = ?2, updated_at = {NOW} \
             WHERE id = ?1 AND state IN ('pending', 'running')"
        ),
        &[s(op_id), s(error)],
    )
    .await
    .map(drop)
}

/// Closes an operation as `succeeded` or `failed`.
pub async fn finish_operation(db: &D1Database, op_id: &str, succeeded: bool, error: Option<&str>) -> Result<()> {
    changed(
        db,
        &format!(
            "UPDATE operations SET state = ?2, last_error = COALESCE(?3, last_error), next_step = NULL, \
             finished_at = {NOW}, updated_at = {NOW} WHERE id = ?1 AND state IN ('pending', 'running')"
        ),
        &[s(op_id), s(if succeeded { "succeeded" } else { "failed" }), opt(error)],
    )
    .await
    .map(drop)
}

/// Replaces the operation's input (used to scrub the password hash once seeded).
pub async fn set_operation_input(db: &D1Database, op_id: &str, input: &str) -> Result<()> {
    changed(db, "UPDATE operations SET input = ?2 WHERE id = ?1", &[s(op_id), s(input)]).await.map(drop)
}

// --- audit and leases ---------------------------------------------------------------------

pub async fn audit(
    db: &D1Database,
    actor: &str,
    action: &str,
    slug: Option<&str>,
    request_id: &str,
    detail: &serde_json::Value,
) -> Result<()> {
    changed(
        db,
        "INSERT INTO audit_log (actor, action, tenant_slug, request_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        &[s(actor), s(action), opt(slug), s(request_id), s(&detail.to_string())],
    )
    .await
    .map(drop)
}

/// Takes lease `name` for `ttl_ms` unless someone else holds an unexpired one.
pub async fn acquire_lease(db: &D1Database, name: &str, holder: &str, now_ms: f64, ttl_ms: f64) -> Result<bool> {
    changed(
        db,
        "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
         WHERE leases.expires_at < ?4 OR leases.holder = excluded.holder",
        &[s(name), s(holder), JsValue::from(now_ms + ttl_ms), JsValue::from(now_ms)],
    )
    .await
}

pub async fn release_lease(db: &D1Database, name: &str, holder: &str) -> Result<()> {
    changed(db, "DELETE FROM leases WHERE name = ?1 AND holder = ?2", &[s(name), s(holder)]).await.map(drop)
}
