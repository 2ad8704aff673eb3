//! The control plane's backups and restores: the backups kept in R2 (one row each, written only
//! after the object was read back and checked), the scheduled fan-out's order, restores as
//! operations, and the spare databases a restore holds.

use super::*;

/// A backup to record (its object is stored and verified).
pub struct NewBackup<'a> {
    pub slug: &'a str,
    /// `scheduled`, `manual` or `delete`.
    pub kind: &'a str,
    pub object_key: &'a str,
    pub database_id: &'a str,
    pub schema_version: i64,
    pub bytes: usize,
    pub sha256: &'a str,
    pub md5: &'a str,
    /// JSON `{table: rows}`.
    pub row_counts: &'a str,
    pub taken_at: i64,
    pub verified_at: i64,
}

/// A row of `backups`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupRow {
    pub id: i64,
    pub tenant_slug: String,
    pub kind: String,
    pub object_key: String,
    pub database_id: String,
    pub schema_version: i64,
    pub bytes: i64,
    pub sha256: String,
    pub md5: String,
    pub row_counts: String,
    pub taken_at: i64,
    pub verified_at: i64,
}

const BACKUP_COLUMNS: &str = "id, tenant_slug, kind, object_key, database_id, schema_version, bytes, sha256, md5, \
                              row_counts, taken_at, verified_at";

/// A database a tenant holds besides its own (a row of `spare_databases`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpareDatabase {
    pub name: String,
    pub tenant_slug: String,
    pub database_id: Option<String>,
    /// `restore` (being imported into) or `replaced` (what a restore switched away from).
    pub role: String,
    pub operation_id: String,
    pub drop_after: Option<i64>,
}

const SPARE_COLUMNS: &str = "name, tenant_slug, database_id, role, operation_id, drop_after";

/// How a restore starts.
pub enum RestoreStart<'a> {
    /// An active or suspended tenant with no open operation starts `restoring`; `spare` is the
    /// name of the new database a restore from a backup imports into.
    InPlace { spare: Option<&'a str> },
    /// A deleted tenant becomes `provisioning` again, its database to be `database_name`.
    Undelete { database_name: &'a str },
}

impl<S: Sql> ControlStore<S> {
    /// Records a verified backup; a scheduled one also moves the tenant's place in the fan-out.
    pub async fn record_backup(&self, b: &NewBackup<'_>) -> Result<()> {
        let mut batch = vec![sql!(
            "INSERT INTO backups (tenant_slug, kind, object_key, database_id, schema_version, bytes, sha256, \
             md5, row_counts, taken_at, verified_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
             ON CONFLICT (object_key) DO NOTHING",
            b.slug,
            b.kind,
            b.object_key,
            b.database_id,
            b.schema_version,
            b.bytes,
            b.sha256,
            b.md5,
            b.row_counts,
            b.taken_at,
            b.verified_at
        )];
        if b.kind == "scheduled" {
            batch.push(sql!(
                "UPDATE tenants SET backed_up_at = ?2, backup_tried_at = ?2, backup_error = NULL WHERE slug = ?1",
                b.slug,
                b.taken_at
            ));
        }
        self.db.batch(batch).await.map(drop)
    }

    /// A scheduled backup that failed: the tenant goes to the back of the queue, with the error.
    pub async fn backup_failed(&self, slug: &str, at_ms: i64, error: &str) -> Result<()> {
        self.db
            .run(sql!("UPDATE tenants SET backup_tried_at = ?2, backup_error = ?3 WHERE slug = ?1", slug, at_ms, error))
            .await
            .map(drop)
    }

    /// Tenants in service whose last scheduled backup was taken before `due_before_ms` (or who
    /// have none and were created before it), least recently tried first.
    /// `only`: of these slugs only (JSON array text).
    pub async fn backups_due(&self, due_before_ms: i64, limit: u32, only: Option<&str>) -> Result<Vec<TenantRow>> {
        self.db
            .all(sql!(
                format!(
                    "SELECT {TENANT_COLUMNS} FROM tenants WHERE {DUE} \
                     ORDER BY COALESCE(backup_tried_at, 0), slug LIMIT ?2"
                ),
                due_before_ms,
                limit,
                only
            ))
            .await
    }

    /// How many tenants are due (see [`Self::backups_due`]).
    pub async fn backups_due_count(&self, due_before_ms: i64, only: Option<&str>) -> Result<i64> {
        #[derive(Deserialize)]
        struct Count {
            n: i64,
        }
        let row: Option<Count> = self
            .db
            .first(sql!(format!("SELECT count(*) AS n FROM tenants WHERE {DUE}"), due_before_ms, 0_i64, only))
            .await?;
        Ok(row.map_or(0, |c| c.n))
    }

    /// A tenant's backups, newest first (`kind`: only that kind).
    pub async fn backups_of(&self, slug: &str, kind: Option<&str>) -> Result<Vec<BackupRow>> {
        self.db
            .all(sql!(
                format!(
                    "SELECT {BACKUP_COLUMNS} FROM backups WHERE tenant_slug = ?1 AND (?2 IS NULL OR kind = ?2) \
                     ORDER BY taken_at DESC, id DESC"
                ),
                slug,
                kind
            ))
            .await
    }

    /// Backup `id` of tenant `slug`.
    pub async fn backup_of(&self, slug: &str, id: i64) -> Result<Option<BackupRow>> {
        self.db
            .first(sql!(format!("SELECT {BACKUP_COLUMNS} FROM backups WHERE tenant_slug = ?1 AND id = ?2"), slug, id))
            .await
    }

    /// Forgets backup `id` (its object was deleted first).
    pub async fn forget_backup(&self, id: i64) -> Result<()> {
        self.db.run(sql!("DELETE FROM backups WHERE id = ?1", id)).await.map(drop)
    }

    /// Opens a restore in one batch: the tenant's change (see [`RestoreStart`]), the operation,
    /// the spare database's row and the audit row, all only if the tenant could start it (an
    /// active or suspended tenant with no open operation and no restore running; or a deleted
    /// one). A point-in-time restore marks the tenant `restoring` here; a restore from a backup
    /// at its quiesce step ([`Self::begin_restoring`]). Returns whether this call opened it.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_restore(
        &self,
        slug: &str,
        op_id: &str,
        kind: OperationKind,
        start: RestoreStart<'_>,
        input: &str,
        now_ms: i64,
        audit_detail: &Value,
    ) -> Result<bool> {
        let mut batch = vec![match start {
            // A point-in-time restore stops serving at once; a restore from a backup keeps serving
            // the old data until its import has been checked (its quiesce step stops serving).
            RestoreStart::InPlace { spare } => sql!(
                format!(
                    "UPDATE tenants SET restoring = CASE WHEN ?4 THEN restoring ELSE ?2 END, \
                     restoring_since = CASE WHEN ?4 THEN restoring_since ELSE ?3 END, updated_at = {NOW} \
                     WHERE slug = ?1 AND status IN ('active', 'suspended') AND restoring IS NULL AND NOT EXISTS \
                     (SELECT 1 FROM operations WHERE tenant_slug = ?1 AND {OPEN})"
                ),
                slug,
                op_id,
                now_ms,
                spare.is_some()
            ),
            RestoreStart::Undelete { database_name } => sql!(
                format!(
                    "UPDATE tenants SET status = 'provisioning', database_name = ?2, database_id = NULL, \
                     schema_version = 0, status_message = NULL, last_error = NULL, bind_wanted = 0, \
                     create_fingerprint = NULL, deleted_at = NULL, migration_error = NULL, synced_version = 0, \
                     sync_error = NULL, host = NULL, on_host = 0, main_until = NULL, backed_up_at = NULL, \
                     backup_tried_at = NULL, backup_error = NULL, updated_at = {NOW} \
                     WHERE slug = ?1 AND status = 'deleted' AND NOT EXISTS \
                     (SELECT 1 FROM operations WHERE tenant_slug = ?1 AND {OPEN})"
                ),
                slug,
                database_name
            ),
        }];
        batch.push(sql!(
            "INSERT INTO operations (id, tenant_slug, kind, state, input, next_step) \
             SELECT ?1, ?2, ?3, 'pending', ?4, ?5 WHERE changes() > 0",
            op_id,
            slug,
            kind.as_str(),
            input,
            step_name(kind.steps()[0])
        ));
        if let RestoreStart::InPlace { spare: Some(name) } = start {
            batch.push(sql!(
                "INSERT INTO spare_databases (name, tenant_slug, role, operation_id) \
                 SELECT ?1, ?2, 'restore', ?3 WHERE changes() > 0",
                name,
                slug,
                op_id
            ));
        }
        batch.push(audit_if_changed("admin", &format!("tenant.{}", kind.as_str()), Some(slug), op_id, audit_detail));
        let results = self.db.batch(batch).await?;
        Ok(changed_in(&results, 1))
    }

    /// Stops serving tenant `slug` for restore `op_id` (from now, unless it already was for it).
    /// Returns whether the tenant is restoring under `op_id`.
    pub async fn begin_restoring(&self, slug: &str, op_id: &str, now_ms: i64) -> Result<bool> {
        self.db
            .run(sql!(
                format!(
                    "UPDATE tenants SET restoring = ?2, restoring_since = ?3, updated_at = {NOW} \
                     WHERE slug = ?1 AND restoring IS NULL AND status IN ('active', 'suspended') AND EXISTS \
                     (SELECT 1 FROM operations WHERE id = ?2 AND tenant_slug = ?1 AND {OPEN})"
                ),
                slug,
                op_id,
                now_ms
            ))
            .await?;
        Ok(self.tenant(slug).await?.is_some_and(|t| t.restoring.as_deref() == Some(op_id)))
    }

    /// The spare database restore operation `op_id` imports into.
    pub async fn restore_spare(&self, op_id: &str) -> Result<Option<SpareDatabase>> {
        self.db
            .first(sql!(
                format!("SELECT {SPARE_COLUMNS} FROM spare_databases WHERE operation_id = ?1 AND role = 'restore'"),
                op_id
            ))
            .await
    }

    /// Records the id of spare database `name` once it exists.
    pub async fn set_spare_id(&self, name: &str, database_id: &str) -> Result<()> {
        self.db
            .run(sql!("UPDATE spare_databases SET database_id = ?2 WHERE name = ?1", name, database_id))
            .await
            .map(drop)
    }

    /// The switch of a restore from a backup, in one batch and only while the tenant is still
    /// restoring under `op_id` (and the runner holds `fence`): the tenant's current database
    /// becomes a `replaced` spare kept until `keep_until_ms`, the restore's spare becomes the
    /// tenant's database, and its host is marked changed (the binding now names the new id).
    /// Running it again after it landed changes nothing. Returns whether the tenant now names the
    /// new database.
    #[allow(clippy::too_many_arguments)]
    pub async fn switch_database(
        &self,
        slug: &str,
        op_id: &str,
        fence: &Fence<'_>,
        name: &str,
        database_id: &str,
        schema_version: i64,
        keep_until_ms: i64,
    ) -> Result<bool> {
        let restoring = "EXISTS (SELECT 1 FROM tenants WHERE slug = ?1 AND restoring = ?2)";
        let batch = vec![
            fence.bind(sql!(
                format!(
                    "INSERT INTO spare_databases (name, tenant_slug, database_id, role, operation_id, drop_after) \
                     SELECT database_name, slug, database_id, 'replaced', ?2, ?4 FROM tenants \
                     WHERE slug = ?1 AND restoring = ?2 AND database_id IS NOT ?3 AND {} \
                     ON CONFLICT (name) DO NOTHING",
                    fence.sql(5)
                ),
                slug,
                op_id,
                database_id,
                keep_until_ms
            )),
            fence.bind(sql!(
                format!(
                    "UPDATE tenants SET database_name = ?3, database_id = ?4, schema_version = ?5, updated_at = {NOW} \
                     WHERE slug = ?1 AND restoring = ?2 AND database_id IS NOT ?4 AND {}",
                    fence.sql(6)
                ),
                slug,
                op_id,
                name,
                database_id,
                schema_version
            )),
            host_set_changed(slug),
            sql!(
                format!("DELETE FROM spare_databases WHERE name = ?3 AND role = 'restore' AND {restoring}"),
                slug,
                op_id,
                name
            ),
        ];
        self.db.batch(batch).await?;
        let now: Option<TenantRow> = self.tenant(slug).await?;
        Ok(now.is_some_and(|t| t.database_id.as_deref() == Some(database_id)))
    }

    /// Ends an in-place restore (point in time or from a backup) in one batch: the tenant is
    /// served again, and only then is the operation closed and the end audited. `false` when
    /// the tenant was not restoring under `op_id` any more, or the fence was lost.
    pub async fn complete_restore(
        &self,
        op_id: &str,
        fence: &Fence<'_>,
        slug: &str,
        kind: OperationKind,
    ) -> Result<bool> {
        let batch = vec![
            fence.bind(sql!(
                format!(
                    "UPDATE tenants SET restoring = NULL, restoring_since = NULL, last_error = NULL, \
                     updated_at = {NOW} WHERE slug = ?1 AND restoring = ?2 AND {}",
                    fence.sql(3)
                ),
                slug,
                op_id
            )),
            close_succeeded_if_changed(op_id),
            audit_if_changed(
                "lifecycle",
                &format!("tenant.{}.done", kind.as_str()),
                Some(slug),
                op_id,
                &serde_json::json!({ "operation": op_id }),
            ),
        ];
        let results = self.db.batch(batch).await?;
        Ok(changed_in(&results, 0))
    }

    /// An in-place restore that cannot finish, in one batch: the operation is closed as failed,
    /// the tenant is served again (from the database it still names: its old one, unless the
    /// switch had landed), and the restore's unswitched spare is left for the sweep to drop.
    pub async fn fail_restore(&self, op_id: &str, fence: &Fence<'_>, slug: &str, reason: &str) -> Result<bool> {
        let batch = vec![
            close_failed(op_id, fence, reason),
            audit_if_changed(
                "lifecycle",
                "tenant.restore.failed",
                Some(slug),
                op_id,
                &serde_json::json!({ "operation": op_id, "error": reason }),
            ),
            // Served again (a restore from a backup that failed before its quiesce never stopped).
            sql!(
                format!(
                    "UPDATE tenants SET restoring = NULL, restoring_since = NULL, last_error = ?3, updated_at = {NOW} \
                     WHERE slug = ?1 AND EXISTS (SELECT 1 FROM operations WHERE id = ?2 AND state = 'failed') \
                     AND (restoring = ?2 OR restoring IS NULL)"
                ),
                slug,
                op_id,
                reason
            ),
        ];
        let results = self.db.batch(batch).await?;
        Ok(changed_in(&results, 0))
    }

    /// Spare databases to drop now: replaced ones past their time (or whose tenant is being
    /// deleted or is gone), and restore spares whose operation is no longer open.
    pub async fn spares_to_drop(&self, now_ms: i64, limit: u32) -> Result<Vec<SpareDatabase>> {
        self.db
            .all(sql!(
                format!(
                    "SELECT {SPARE_COLUMNS} FROM spare_databases s WHERE \
                     (role = 'replaced' AND (drop_after <= ?1 OR NOT EXISTS (SELECT 1 FROM tenants t \
                       WHERE t.slug = s.tenant_slug AND t.status IN ('active', 'suspended', 'provisioning', 'failed')))) \
                     OR (role = 'restore' AND NOT EXISTS (SELECT 1 FROM operations o WHERE o.id = s.operation_id AND o.{OPEN})) \
                     ORDER BY name LIMIT ?2"
                ),
                now_ms,
                limit
            ))
            .await
    }

    /// Forgets spare `name` (its database was deleted).
    pub async fn forget_spare(&self, name: &str) -> Result<()> {
        self.db.run(sql!("DELETE FROM spare_databases WHERE name = ?1", name)).await.map(drop)
    }

    /// The operator confirms the tenant's restores: its replaced databases may be dropped now.
    /// Returns how many.
    pub async fn confirm_restores(&self, slug: &str, request_id: &str) -> Result<u64> {
        let results = self
            .db
            .batch(vec![
                sql!(
                    "UPDATE spare_databases SET drop_after = 0 WHERE tenant_slug = ?1 AND role = 'replaced' \
                     AND drop_after > 0",
                    slug
                ),
                audit_if_changed("admin", "tenant.restore.confirm", Some(slug), request_id, &serde_json::json!({})),
            ])
            .await?;
        Ok(results.first().map_or(0, |o| o.changes))
    }

    /// The spare databases of tenant `slug`.
    pub async fn spares_of(&self, slug: &str) -> Result<Vec<SpareDatabase>> {
        self.db
            .all(sql!(
                format!("SELECT {SPARE_COLUMNS} FROM spare_databases WHERE tenant_slug = ?1 ORDER BY name"),
                slug
            ))
            .await
    }
}

/// A tenant due for a scheduled backup (`?1`: the newest `backed_up_at` that is due, in ms; `?3`:
/// a JSON array of the slugs to consider, or NULL for all).
/// A tenant never backed up is due once it is that old.
const DUE: &str = "status IN ('active', 'suspended') AND restoring IS NULL AND database_id IS NOT NULL \
                   AND (backed_up_at < ?1 OR (backed_up_at IS NULL AND \
                   created_at < strftime('%Y-%m-%dT%H:%M:%fZ', ?1 / 1000.0, 'unixepoch'))) \
                   AND (?3 IS NULL OR slug IN (SELECT value FROM json_each(?3)))";
