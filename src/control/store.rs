//! The control plane's tables, read and written through its D1 binding.
//!
//! Every rule that guards a write is decided by the write itself: status changes are
//! compare-and-set (`WHERE status IN (...)`), a tenant row and the operation that carries it are
//! written in one batch (one transaction), and a saga runner's writes to its operation are fenced
//! by its lease (`AND EXISTS (SELECT 1 FROM leases WHERE name = .. AND holder = ..)`), so a runner
//! that lost its lease (it stalled past the lease, another took over) changes nothing. The caller
//! learns from the returned flag whether its write happened.

use serde::{Deserialize, Serialize};
use wasm_bindgen::JsValue;
use worker::{D1Database, D1PreparedStatement, Result};

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

/// Whether statement `index` of a batch changed a row.
fn changed_in(results: &[worker::D1Result], index: usize) -> bool {
    results.get(index).and_then(|r| r.meta().ok().flatten()).and_then(|m| m.changes).unwrap_or(0) > 0
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

/// How a create request starts, chosen from the row the handler read. The statement re-checks
/// its own condition, so a stale read can only make it do nothing, never the wrong thing.
pub enum CreateStart<'a> {
    /// No row: insert a `provisioning` row (nothing if the slug was taken meanwhile).
    Insert(&'a NewTenant<'a>),
    /// A deleted tenant's tombstone, replaced by a fresh `provisioning` row (explicit recreate).
    ReplaceTombstone(&'a NewTenant<'a>),
    /// The same create, failed: back to `provisioning`.
    Resume,
    /// The same create, still provisioning: only make sure it has its operation.
    Join,
}

/// Starts a create in one batch (one transaction): the tenant row's change, the create operation
/// and the audit row. The operation is opened only when the tenant is then `provisioning` with
/// this create's `fingerprint` and has no open operation, so a crash can never leave a
/// provisioning tenant without the operation that finishes it, and identical concurrent creates
/// open exactly one. Returns whether this call opened the operation.
pub async fn start_create(
    db: &D1Database,
    start: CreateStart<'_>,
    slug: &str,
    fingerprint: &str,
    op_id: &str,
    input: &str,
    audit_detail: &serde_json::Value,
) -> Result<bool> {
    let mut batch = Vec::new();
    let action = match &start {
        CreateStart::ReplaceTombstone(_) => "tenant.recreate",
        _ => "tenant.create",
    };
    match start {
        CreateStart::Insert(t) => batch.push(
            db.prepare(
                "INSERT INTO tenants (slug, display_name, plan, status, database_name, binding_name, create_fingerprint) \
                 VALUES (?1, ?2, ?3, 'provisioning', ?4, ?5, ?6) ON CONFLICT (slug) DO NOTHING",
            )
            .bind(&[s(t.slug), s(t.display_name), s(t.plan), s(t.database_name), s(t.binding_name), s(t.fingerprint)])?,
        ),
        CreateStart::ReplaceTombstone(t) => batch.push(
            db.prepare(format!(
                "UPDATE tenants SET display_name = ?2, plan = ?3, status = 'provisioning', database_id = NULL, \
                 schema_version = 0, status_message = NULL, backup_location = NULL, backup_bytes = NULL, \
                 backup_sha256 = NULL, last_error = NULL, bind_wanted = 0, create_fingerprint = ?4, deleted_at = NULL, \
                 migration_error = NULL, synced_version = 0, sync_error = NULL, maintenance_message = NULL, \
                 maintenance_until = NULL, created_at = {NOW}, updated_at = {NOW} WHERE slug = ?1 AND status = 'deleted'"
            ))
            .bind(&[s(t.slug), s(t.display_name), s(t.plan), s(t.fingerprint)])?,
        ),
        CreateStart::Resume => batch.push(
            db.prepare(format!(
                "UPDATE tenants SET status = 'provisioning', status_message = NULL, last_error = NULL, updated_at = {NOW} \
                 WHERE slug = ?1 AND status = 'failed' AND create_fingerprint = ?2"
            ))
            .bind(&[s(slug), s(fingerprint)])?,
        ),
        CreateStart::Join => {}
    }
    let first = step_name(OperationKind::Create.steps()[0]);
    batch.push(
        db.prepare(
            "INSERT INTO operations (id, tenant_slug, kind, state, input, next_step) \
             SELECT ?1, ?2, 'create', 'pending', ?3, ?4 WHERE EXISTS \
             (SELECT 1 FROM tenants WHERE slug = ?2 AND status = 'provisioning' AND create_fingerprint = ?5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&[s(op_id), s(slug), s(input), s(&first), s(fingerprint)])?,
    );
    let opened = batch.len() - 1;
    batch.push(audit_if_changed(db, "admin", action, slug, op_id, audit_detail)?);
    let results = db.batch(batch).await?;
    Ok(changed_in(&results, opened))
}

/// An audit row written only when the statement just before it in the batch changed a row
/// (`changes()` is the row count of the last completed statement of the same connection, and a
/// D1 batch runs its statements in order on one).
fn audit_if_changed(
    db: &D1Database,
    actor: &str,
    action: &str,
    slug: &str,
    request_id: &str,
    detail: &serde_json::Value,
) -> Result<D1PreparedStatement> {
    db.prepare(
        "INSERT INTO audit_log (actor, action, tenant_slug, request_id, detail) \
         SELECT ?1, ?2, ?3, ?4, ?5 WHERE changes() > 0",
    )
    .bind(&[s(actor), s(action), s(slug), s(request_id), s(&detail.to_string())])
}

/// Starts (or joins) a delete in one batch: the tenant moves to `deleting` from any status but
/// `deleted`, an open create is closed as superseded, and a delete operation is opened unless one
/// is open. Nothing of it happens unless the tenant is then `deleting`. Returns whether this call
/// moved the tenant to `deleting`.
pub async fn start_delete(db: &D1Database, slug: &str, op_id: &str, request_id: &str) -> Result<bool> {
    let deleting = "EXISTS (SELECT 1 FROM tenants WHERE slug = ?1 AND status = 'deleting')";
    let batch = vec![
        // The audit row first, so it can say what the tenant was; only when it will move.
        db.prepare(
            "INSERT INTO audit_log (actor, action, tenant_slug, request_id, detail) \
             SELECT 'admin', 'tenant.delete', slug, ?2, json_object('from', status) FROM tenants \
             WHERE slug = ?1 AND status IN ('provisioning', 'active', 'suspended', 'failed')",
        )
        .bind(&[s(slug), s(request_id)])?,
        db.prepare(format!(
            "UPDATE tenants SET status = 'deleting', status_message = NULL, updated_at = {NOW} \
             WHERE slug = ?1 AND status IN ('provisioning', 'active', 'suspended', 'failed')"
        ))
        .bind(&[s(slug)])?,
        db.prepare(format!(
            "UPDATE operations SET state = 'failed', last_error = 'superseded by a delete', next_step = NULL, \
             finished_at = {NOW}, updated_at = {NOW} \
             WHERE tenant_slug = ?1 AND kind != 'delete' AND state IN ('pending', 'running') AND {deleting}"
        ))
        .bind(&[s(slug)])?,
        open_delete(db, slug, op_id)?,
    ];
    let results = db.batch(batch).await?;
    Ok(changed_in(&results, 1))
}

/// What an operator's `PATCH /v1/tenants/{slug}` changes; `None` leaves a field as it is.
#[derive(Default)]
pub struct TenantChanges<'a> {
    pub name: Option<&'a str>,
    pub plan: Option<&'a str>,
    /// A status an operator may ask for (`active` or `suspended`), with its message.
    pub status: Option<(TenantStatus, Option<&'a str>)>,
    /// `Some(None)` lifts the tenant's maintenance; `Some(Some((message, until)))` sets it.
    pub maintenance: Option<Option<(&'a str, Option<&'a str>)>>,
}

/// Applies an operator's changes in one statement, with its audit row in the same batch. The
/// statement holds the rules: never on a deleted tenant; a status only from a status an operator
/// may move it from ([`TenantStatus::operator_sources`]: suspend and resume, never a saga's
/// move), and `active` only for a tenant whose binding is wanted. `None` when nothing matched
/// (the caller re-reads to say why).
pub async fn update_tenant(
    db: &D1Database,
    slug: &str,
    changes: &TenantChanges<'_>,
    request_id: &str,
    audit_detail: &serde_json::Value,
) -> Result<Option<TenantRow>> {
    let (status, message) = changes.status.map_or((None, None), |(st, m)| (Some(st), m));
    let sources = status.map_or_else(String::new, |to| {
        let list = TenantStatus::operator_sources(to).iter().map(|st| format!("'{}'", st.as_str())).collect::<Vec<_>>();
        // A status no operator may ask for matches nothing.
        format!(" AND status IN ({})", if list.is_empty() { "NULL".to_owned() } else { list.join(", ") })
    });
    let (set_maintenance, maintenance) = match changes.maintenance {
        None => (false, None),
        Some(m) => (true, m),
    };
    let update = db
        .prepare(format!(
            "UPDATE tenants SET display_name = COALESCE(?2, display_name), plan = COALESCE(?3, plan), \
             status = COALESCE(?4, status), status_message = CASE WHEN ?4 IS NULL THEN status_message ELSE ?5 END, \
             maintenance_message = CASE WHEN ?6 THEN ?7 ELSE maintenance_message END, \
             maintenance_until = CASE WHEN ?6 THEN ?8 ELSE maintenance_until END, updated_at = {NOW} \
             WHERE slug = ?1 AND status != 'deleted'{sources} AND (?4 IS NOT 'active' OR bind_wanted = 1) \
             RETURNING {TENANT_COLUMNS}"
        ))
        .bind(&[
            s(slug),
            opt(changes.name),
            opt(changes.plan),
            opt(status.map(TenantStatus::as_str)),
            opt(message),
            JsValue::from(i32::from(set_maintenance)),
            opt(maintenance.map(|m| m.0)),
            opt(maintenance.and_then(|m| m.1)),
        ])?;
    let audit = audit_if_changed(db, "admin", "tenant.update", slug, request_id, audit_detail)?;
    let results = db.batch(vec![update, audit]).await?;
    Ok(results.first().map(|r| r.results::<TenantRow>()).transpose()?.and_then(|mut rows| rows.pop()))
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

/// A change to one system role.
pub enum RoleWrite<'a> {
    /// A new role; nothing when the name is taken.
    Create {
        description: &'a str,
        permissions: &'a [String],
    },
    /// Changes an existing role; `None` keeps a field.
    Update {
        description: Option<&'a str>,
        permissions: Option<&'a [String]>,
    },
    Delete,
}

/// Writes a role, bumps the entity version and audits, in one batch; the bump and the audit
/// happen only when the write changed a row. Returns whether it did: `false` means the name is
/// taken (create) or there is no such role (update, delete).
pub async fn write_role(
    db: &D1Database,
    name: &str,
    write: RoleWrite<'_>,
    request_id: &str,
    audit_detail: &serde_json::Value,
) -> Result<bool> {
    let json = |p: &[String]| serde_json::to_string(p).unwrap_or_else(|_| "[]".into());
    let (statement, action) = match write {
        RoleWrite::Create { description, permissions } => (
            db.prepare(
                "INSERT INTO roles (name, description, permissions) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
            )
            .bind(&[s(name), s(description), s(&json(permissions))])?,
            "role.create",
        ),
        RoleWrite::Update { description, permissions } => (
            db.prepare(format!(
                "UPDATE roles SET description = COALESCE(?2, description), permissions = COALESCE(?3, permissions), \
                 updated_at = {NOW} WHERE name = ?1"
            ))
            .bind(&[s(name), opt(description), opt(permissions.map(json).as_deref())])?,
            "role.update",
        ),
        RoleWrite::Delete => (db.prepare("DELETE FROM roles WHERE name = ?1").bind(&[s(name)])?, "role.delete"),
    };
    let bump = db.prepare(
        "UPDATE platform SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'entity_version' AND changes() > 0",
    );
    let audit = db
        .prepare(
            "INSERT INTO audit_log (actor, action, tenant_slug, request_id, detail) \
             SELECT 'admin', ?1, NULL, ?2, ?3 WHERE changes() > 0",
        )
        .bind(&[s(action), s(request_id), s(&audit_detail.to_string())])?;
    let results = db.batch(vec![statement, bump, audit]).await?;
    Ok(changed_in(&results, 0))
}

// --- operations ---------------------------------------------------------------------------

const OP_COLUMNS: &str =
    "id, tenant_slug, kind, state, steps, attempts, last_error, input, next_step, created_at, updated_at, finished_at";

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

/// The lease a saga runner holds on its tenant (`tenant:{slug}`). Every write the runner makes
/// to its operation carries [`Fence::sql`], so it lands only while the runner still holds it.
pub struct Fence<'a> {
    pub lease: &'a str,
    pub holder: &'a str,
}

impl Fence<'_> {
    /// `EXISTS (...)` with the lease name and holder at parameters `?{first}` and `?{first + 1}`.
    fn sql(&self, first: usize) -> String {
        format!("EXISTS (SELECT 1 FROM leases WHERE name = ?{first} AND holder = ?{})", first + 1)
    }

    fn params(&self) -> [JsValue; 2] {
        [s(self.lease), s(self.holder)]
    }
}

fn with_fence(mut args: Vec<JsValue>, fence: &Fence<'_>) -> Vec<JsValue> {
    args.extend(fence.params());
    args
}

const OPEN: &str = "state IN ('pending', 'running')";

/// Records `step` as done and what comes next. `false` when the write did not land: the
/// operation was closed meanwhile (a delete superseded it) or the runner no longer holds `fence`.
pub async fn record_step(
    db: &D1Database,
    op_id: &str,
    fence: &Fence<'_>,
    done: &[Step],
    next: Option<Step>,
) -> Result<bool> {
    let steps = serde_json::to_string(done).map_err(|e| worker::Error::RustError(e.to_string()))?;
    changed(
        db,
        &format!(
            "UPDATE operations SET state = 'running', steps = ?2, next_step = ?3, updated_at = {NOW} \
             WHERE id = ?1 AND {OPEN} AND {}",
            fence.sql(4)
        ),
        &with_fence(vec![s(op_id), s(&steps), opt(next.map(step_name).as_deref())], fence),
    )
    .await
}

/// Records a failed attempt; the operation stays open for the next try. Fenced like
/// [`record_step`].
pub async fn record_failure(db: &D1Database, op_id: &str, fence: &Fence<'_>, error: &str) -> Result<bool> {
    changed(
        db,
        &format!(
            "UPDATE operations SET state = 'running', attempts = attempts + 1, last_error = ?2, updated_at = {NOW} \
             WHERE id = ?1 AND {OPEN} AND {}",
            fence.sql(3)
        ),
        &with_fence(vec![s(op_id), s(error)], fence),
    )
    .await
}

/// Closes an open operation as failed without touching its tenant (an abandoned create whose
/// tenant is being deleted, a tenant row gone). Fenced like [`record_step`].
pub async fn abandon_operation(db: &D1Database, op_id: &str, fence: &Fence<'_>, error: &str) -> Result<bool> {
    changed(
        db,
        &format!(
            "UPDATE operations SET state = 'failed', last_error = ?2, next_step = NULL, finished_at = {NOW}, \
             updated_at = {NOW} WHERE id = ?1 AND {OPEN} AND {}",
            fence.sql(3)
        ),
        &with_fence(vec![s(op_id), s(error)], fence),
    )
    .await
}

/// Ends a saga that ran all its steps, in one batch: the tenant moves `from -> to` (a create's
/// `active` also needs its binding wanted), and only then is the operation closed as succeeded
/// and the change audited. `false` when the tenant was not in `from` any more (or the fence was
/// lost): nothing changed.
pub async fn complete_operation(
    db: &D1Database,
    op_id: &str,
    fence: &Fence<'_>,
    slug: &str,
    from: TenantStatus,
    to: TenantStatus,
) -> Result<bool> {
    let deleted_at = if to == TenantStatus::Deleted { NOW } else { "deleted_at" };
    let batch = vec![
        db.prepare(format!(
            "UPDATE tenants SET status = ?2, status_message = NULL, last_error = NULL, updated_at = {NOW}, \
             deleted_at = {deleted_at} WHERE slug = ?1 AND status = ?3 AND (?2 != 'active' OR bind_wanted = 1) \
             AND EXISTS (SELECT 1 FROM operations WHERE id = ?4 AND {OPEN}) AND {}",
            fence.sql(5)
        ))
        .bind(&with_fence(vec![s(slug), s(to.as_str()), s(from.as_str()), s(op_id)], fence))?,
        db.prepare(format!(
            "UPDATE operations SET state = 'succeeded', next_step = NULL, finished_at = {NOW}, updated_at = {NOW} \
             WHERE id = ?1 AND {OPEN} AND changes() > 0"
        ))
        .bind(&[s(op_id)])?,
        audit_if_changed(
            db,
            "lifecycle",
            &format!("tenant.{}", to.as_str()),
            slug,
            op_id,
            &serde_json::json!({ "operation": op_id }),
        )?,
    ];
    let results = db.batch(batch).await?;
    Ok(changed_in(&results, 0))
}

/// A create that cannot succeed, in one batch: the operation is closed as failed and the tenant,
/// still provisioning, becomes `failed` with the reason. `false` when the fence was lost or the
/// operation was closed meanwhile: nothing changed.
pub async fn fail_create(db: &D1Database, op_id: &str, fence: &Fence<'_>, slug: &str, reason: &str) -> Result<bool> {
    let batch = vec![
        db.prepare(format!(
            "UPDATE operations SET state = 'failed', last_error = ?2, next_step = NULL, finished_at = {NOW}, \
             updated_at = {NOW} WHERE id = ?1 AND {OPEN} AND {}",
            fence.sql(3)
        ))
        .bind(&with_fence(vec![s(op_id), s(reason)], fence))?,
        db.prepare(format!(
            "UPDATE tenants SET status = 'failed', status_message = ?2, last_error = ?2, updated_at = {NOW} \
             WHERE slug = ?1 AND status = 'provisioning' AND changes() > 0"
        ))
        .bind(&[s(slug), s(reason)])?,
    ];
    let results = db.batch(batch).await?;
    Ok(changed_in(&results, 0))
}

/// Tenants mid-lifecycle (`provisioning`, `deleting`) with no open operation: left so by a crash
/// of a version that wrote the row and its operation apart, or by a hand edit. The reconciler
/// finishes them (see `Lifecycle::adopt_strays`).
pub async fn tenants_without_operation(db: &D1Database, limit: u32) -> Result<Vec<TenantRow>> {
    db.prepare(format!(
        "SELECT {TENANT_COLUMNS} FROM tenants t WHERE status IN ('provisioning', 'deleting') AND NOT EXISTS \
         (SELECT 1 FROM operations o WHERE o.tenant_slug = t.slug AND o.{OPEN}) ORDER BY updated_at LIMIT ?1"
    ))
    .bind(&[JsValue::from(limit)])?
    .all()
    .await?
    .results()
}

/// A provisioning tenant without an operation cannot be finished (the admin's password hash
/// went with the request that never recorded it): it becomes `failed`, which a re-sent create
/// resumes and a delete tears down. Only while it still has no open operation.
pub async fn fail_stray_create(db: &D1Database, slug: &str, reason: &str) -> Result<bool> {
    changed(
        db,
        &format!(
            "UPDATE tenants SET status = 'failed', status_message = ?2, last_error = ?2, updated_at = {NOW} \
             WHERE slug = ?1 AND status = 'provisioning' AND NOT EXISTS \
             (SELECT 1 FROM operations WHERE tenant_slug = ?1 AND {OPEN})"
        ),
        &[s(slug), s(reason)],
    )
    .await
}

/// The statement that opens a delete operation for a `deleting` tenant, unless one is open.
fn open_delete(db: &D1Database, slug: &str, op_id: &str) -> Result<D1PreparedStatement> {
    db.prepare(
        "INSERT INTO operations (id, tenant_slug, kind, state, input, next_step) \
         SELECT ?2, ?1, 'delete', 'pending', '{}', ?3 WHERE EXISTS \
         (SELECT 1 FROM tenants WHERE slug = ?1 AND status = 'deleting') ON CONFLICT DO NOTHING",
    )
    .bind(&[s(slug), s(op_id), s(&step_name(OperationKind::Delete.steps()[0]))])
}

/// Opens a delete operation for a `deleting` tenant that has none.
pub async fn open_stray_delete(db: &D1Database, slug: &str, op_id: &str) -> Result<bool> {
    let result = open_delete(db, slug, op_id)?.run().await?;
    Ok(result.meta()?.and_then(|m| m.changes).unwrap_or(0) > 0)
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

/// Extends lease `name` while `holder` still holds it; `false` when it does not any more.
pub async fn renew_lease(db: &D1Database, name: &str, holder: &str, now_ms: f64, ttl_ms: f64) -> Result<bool> {
    changed(
        db,
        "UPDATE leases SET expires_at = ?3 WHERE name = ?1 AND holder = ?2",
        &[s(name), s(holder), JsValue::from(now_ms + ttl_ms)],
    )
    .await
}

pub async fn release_lease(db: &D1Database, name: &str, holder: &str) -> Result<()> {
    changed(db, "DELETE FROM leases WHERE name = ?1 AND holder = ?2", &[s(name), s(holder)]).await.map(drop)
}
