//! Backups and restores: taking a verified backup (export, download, store in R2, read back),
//! the scheduled fan-out with its retention, the steps of the three restores (point in time
//! through Time Travel, from a backup into a new database, undelete), and the sweep of the spare
//! databases restores leave behind.
//!
//! **Why a restore can never serve a pre-restore view from a cache.** Every isolate caches a
//! tenant's control-plane row and its users for at most `directory::TTL_MS` (5 s), timestamped
//! with when the read began. A restore first marks the tenant `restoring` (requests get 503), then
//! waits [`QUIESCE_MS`] (two TTLs and a margin: one for the row, one for a user read by a request
//! that still had the old row) before it touches the database. By then no isolate holds anything
//! read before the restore began, and none reads the database until the tenant is reopened. A
//! restore from a backup also changes the database id, which keys the user cache and the tokens
//! (`db` claim): old sessions must sign in again.

use std::collections::BTreeMap;

use super::*;
use crate::core::slug::TenantSlug;
use crate::store::control::{NewBackup, SpareDatabase};

/// How long a restore waits, once the tenant is `restoring`, before it changes the database.
pub const QUIESCE_MS: f64 = 2.0 * crate::store::directory::TTL_MS + 1_000.0;
/// Import polls within one invocation before leaving the rest to the next.
const IMPORT_POLLS: u32 = 40;

/// What a restore operation carries (its `input`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreInput {
    /// Point in time: the time asked for (RFC 3339), and the bookmark found for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bookmark: Option<String>,
    /// The bookmark of the state the restore replaced (undo with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_bookmark: Option<String>,
    /// From a backup, and undelete: the backup, the new database's name, and the import's
    /// bookmark once it was started (so a resumed step polls it instead of importing again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_bookmark: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i64>,
}

/// One tenant's outcome in a backup pass.
#[derive(Debug, Clone, Serialize)]
pub struct BackupOutcome {
    pub slug: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub pruned: usize,
}

/// A backup pass's report.
#[derive(Debug, Clone, Serialize)]
pub struct BackupPass {
    pub processed: usize,
    pub succeeded: usize,
    pub failed: Vec<BackupOutcome>,
    pub backed_up: Vec<BackupOutcome>,
    /// Tenants still due after this pass (call again while it is above 0).
    pub remaining: i64,
}

fn input_of(op: &OperationRow) -> RestoreInput {
    serde_json::from_str(&op.input).unwrap_or_default()
}

/// `"users"`: a table name quoted for SQL.
fn quoted(table: &str) -> String {
    format!("\"{}\"", table.replace('"', "\"\""))
}

impl<P: Platform> Lifecycle<P> {
    /// Takes a backup of `tenant`'s database now: export, download, store, read back and compare
    /// (size and SHA-256), then record. `Ok(Err(reason))` when it cannot finish now.
    pub async fn take_backup(
        &self,
        tenant: &TenantRow,
        id: &str,
        kind: &str,
    ) -> Result<std::result::Result<NewBackupDone, String>> {
        let url = match self.api.export_url(id, EXPORT_POLLS).await? {
            Ok(url) => url,
            Err(reason) => return Ok(Err(reason)),
        };
        let taken_at = self.clock.now_ms() as i64;
        let key = format!("{}/{}-{}-{}.sql", tenant.slug, steps_iso(taken_at as f64), kind, id);
        let meta = [("tenant", tenant.slug.as_str()), ("database_id", id)];
        // Streamed into R2 and read back there (size and SHA-256 compared); a trouble on the way is
        // a (transient) error: the operation or the tenant records it, and it is tried again.
        let stored = self.backups.store_export(&url, &key, &meta).await?;
        let counts = serde_json::to_string(&stored.rows).unwrap_or_default();
        let done = NewBackupDone { key, bytes: stored.bytes, sha256: stored.sha256 };
        self.store
            .record_backup(&NewBackup {
                slug: &tenant.slug,
                kind,
                object_key: &done.key,
                database_id: id,
                schema_version: tenant.schema_version,
                bytes: stored.bytes,
                sha256: &done.sha256,
                md5: &stored.md5,
                row_counts: &counts,
                taken_at,
                verified_at: self.clock.now_ms() as i64,
            })
            .await?;
        Ok(Ok(done))
    }

    /// One bounded pass of scheduled backups: up to `limit` due tenants, `concurrency` at a time,
    /// least recently tried first. A failure is recorded on the tenant (`backup_error`) and sends
    /// it to the back of the queue; the next pass tries it again. Each tenant backed up has its
    /// scheduled backups pruned to the retention policy.
    /// `due_before_ms`: a tenant is due when its last backup was taken before then (the cron: the
    /// configured interval ago; an operator's run: when the run began, so a run's passes end).
    /// `only`: of these tenants only (an operator's run on demand).
    pub async fn backup_pass(
        &self,
        limit: u32,
        concurrency: usize,
        due_before_ms: i64,
        only: Option<&[String]>,
    ) -> Result<BackupPass> {
        use futures_util::stream::{self, StreamExt};
        let only = only.map(|slugs| serde_json::to_string(slugs).unwrap_or_default());
        let due = self.store.backups_due(due_before_ms, limit, only.as_deref()).await?;
        let outcomes: Vec<BackupOutcome> =
            stream::iter(due.iter().map(|t| self.backup_one(t))).buffer_unordered(concurrency.max(1)).collect().await;
        let (failed, backed_up): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(|o| o.error.is_some());
        let remaining = self.store.backups_due_count(due_before_ms, only.as_deref()).await?;
        Ok(BackupPass {
            processed: failed.len() + backed_up.len(),
            succeeded: backed_up.len(),
            failed,
            backed_up,
            remaining,
        })
    }

    async fn backup_one(&self, tenant: &TenantRow) -> BackupOutcome {
        let mut outcome = BackupOutcome { slug: tenant.slug.clone(), key: None, bytes: None, error: None, pruned: 0 };
        let taken = match tenant.database_id.as_deref() {
            Some(id) => self.take_backup(tenant, id, "scheduled").await,
            None => Ok(Err("the tenant has no database".into())),
        };
        let error = match taken {
            Ok(Ok(done)) => {
                outcome.key = Some(done.key);
                outcome.bytes = Some(done.bytes);
                match self.prune_backups(&tenant.slug).await {
                    Ok(n) => outcome.pruned = n,
                    // Pruned at the next backup of the tenant.
                    Err(e) => log::warn(&format!("pruning backups of {}: {e}", tenant.slug)),
                }
                return outcome;
            }
            Ok(Err(reason)) => reason,
            Err(e) => e.to_string(),
        };
        if let Err(e) = self.store.backup_failed(&tenant.slug, self.clock.now_ms() as i64, &error).await {
            log::warn(&format!("recording the failed backup of {}: {e}", tenant.slug));
        }
        outcome.error = Some(error);
        outcome
    }

    /// Deletes the tenant's scheduled backups the retention policy does not keep (object first,
    /// then its row: a crash between leaves a row whose object is gone, pruned again next time),
    /// and the tenant's objects no row names that are over an hour old (a backup whose process
    /// died between storing the object and recording it; a younger one may be a backup that
    /// another pass is still recording).
    async fn prune_backups(&self, slug: &str) -> Result<usize> {
        let rows = self.store.backups_of(slug, None).await?;
        let scheduled: Vec<(i64, i64)> =
            rows.iter().filter(|b| b.kind == "scheduled").map(|b| (b.id, b.taken_at)).collect();
        let now = self.clock.now_ms() as i64;
        let prune = self.settings.backups.retention.prune(&scheduled, now);
        for row in rows.iter().filter(|b| prune.contains(&b.id)) {
            self.backups.delete(&row.object_key).await?;
            self.store.forget_backup(row.id).await?;
        }
        let named: std::collections::HashSet<&str> = rows.iter().map(|b| b.object_key.as_str()).collect();
        let mut strays = 0;
        for key in self.backups.list(&format!("{slug}/")).await? {
            let old = key_time_ms(&key).is_some_and(|at| now - at > STRAY_AFTER_MS);
            if old && !named.contains(key.as_str()) {
                self.backups.delete(&key).await?;
                strays += 1;
            }
        }
        Ok(prune.len() + strays)
    }

    /// Drops the spare databases no restore needs any more (see `ControlStore::spares_to_drop`).
    pub async fn drop_spares(&self) -> Result<Vec<String>> {
        let mut dropped = Vec::new();
        for spare in self.store.spares_to_drop(self.clock.now_ms() as i64, 20).await? {
            let id = match &spare.database_id {
                Some(id) => Some(id.clone()),
                None => self.api.find_database(&spare.name).await?.map(|d| d.uuid),
            };
            if let Some(id) = id {
                self.api.delete_database(&id).await?;
            }
            self.store.forget_spare(&spare.name).await?;
            let detail = json!({ "database": spare.name, "role": spare.role, "operation": spare.operation_id });
            self.store
                .audit("reconciler", "spare_database.dropped", Some(&spare.tenant_slug), &spare.operation_id, &detail)
                .await?;
            dropped.push(spare.name);
        }
        Ok(dropped)
    }

    // --- the restore steps ------------------------------------------------------------------

    /// Stops serving the tenant (a restore from a backup: only now that its import has been
    /// checked), then waits until [`QUIESCE_MS`] have passed since it stopped.
    pub(super) async fn quiesce(&self, op: &OperationRow, tenant: &TenantRow) -> Result<StepOutcome> {
        let mut since = tenant.restoring_since;
        if tenant.restoring.is_none() {
            if !self.store.begin_restoring(&tenant.slug, &op.id, self.clock.now_ms() as i64).await? {
                return Err(LifecycleError::Permanent("the tenant cannot stop serving for the restore".into()));
            }
            since = self.store.tenant(&tenant.slug).await?.and_then(|t| t.restoring_since);
        }
        let since = since.unwrap_or(0) as f64;
        let left = since + QUIESCE_MS - self.clock.now_ms();
        if left > 0.0 {
            self.clock.sleep(Duration::from_millis(left.ceil() as u64)).await;
        }
        Ok(StepOutcome::Done)
    }

    /// Finds the bookmark of the asked time (once) and restores the database to it. Restoring to
    /// the same bookmark twice (a run cut after the restore, before it was recorded) gives the
    /// same state.
    pub(super) async fn time_travel(&self, op: &OperationRow, tenant: &TenantRow) -> Result<StepOutcome> {
        let id = database_id(tenant)?;
        let mut input = input_of(op);
        let bookmark = match &input.bookmark {
            Some(b) => b.clone(),
            None => {
                let at = input.at.clone().ok_or_else(|| LifecycleError::Permanent("no time to restore to".into()))?;
                let found = self.api.bookmark(id, &at).await.map_err(refused_is_permanent)?.bookmark;
                input.bookmark = Some(found.clone());
                self.store.set_operation_input(&op.id, &serde_json::to_string(&input).unwrap_or_default()).await?;
                found
            }
        };
        let restored = self.api.time_travel_restore(id, &bookmark).await.map_err(refused_is_permanent)?;
        if input.previous_bookmark.is_none() {
            input.previous_bookmark = restored.previous_bookmark;
            self.store.set_operation_input(&op.id, &serde_json::to_string(&input).unwrap_or_default()).await?;
        }
        Ok(StepOutcome::Done)
    }

    /// The database a restore from a backup imports into: created (or found) under its name.
    pub(super) async fn restore_database(&self, op: &OperationRow, tenant: &TenantRow) -> Result<StepOutcome> {
        if op.kind == OperationKind::Undelete {
            return self.find_or_create_database(tenant).await;
        }
        let spare = self.spare(op).await?;
        if spare.database_id.is_some() {
            return Ok(StepOutcome::Done);
        }
        let found = match self.api.create_database(&spare.name).await {
            Ok(db) => db,
            Err(CfError::AlreadyExists { .. }) => match self.api.find_database(&spare.name).await? {
                Some(db) => db,
                None => return Ok(later(format!("{} exists but is not listed yet", spare.name))),
            },
            Err(e) => return Err(e.into()),
        };
        self.store.set_spare_id(&spare.name, &found.uuid).await?;
        Ok(StepOutcome::Done)
    }

    async fn spare(&self, op: &OperationRow) -> Result<SpareDatabase> {
        self.store
            .restore_spare(&op.id)
            .await?
            .ok_or_else(|| LifecycleError::Permanent("the restore's database row is gone".into()))
    }

    /// The database the import goes to: the spare's, or (undelete) the tenant's new one.
    async fn import_target(&self, op: &OperationRow, tenant: &TenantRow) -> Result<String> {
        if op.kind == OperationKind::Undelete {
            return Ok(database_id(tenant)?.to_owned());
        }
        self.spare(op)
            .await?
            .database_id
            .ok_or_else(|| LifecycleError::Permanent("the restore's database has no id".into()))
    }

    async fn backup_row(&self, op: &OperationRow) -> Result<crate::store::control::BackupRow> {
        let id = input_of(op).backup_id.ok_or_else(|| LifecycleError::Permanent("no backup to restore from".into()))?;
        self.store
            .backup_of(&op.tenant_slug, id)
            .await?
            .ok_or_else(|| LifecycleError::Permanent(format!("backup {id} is gone")))
    }

    /// Imports the backup into the new database (D1's import: init, upload, ingest, poll). A run
    /// cut after the ingest polls the recorded import instead of starting another; a database
    /// that already holds tables was imported into already (the check step decides if whole).
    pub(super) async fn import(&self, op: &OperationRow, tenant: &TenantRow) -> Result<StepOutcome> {
        let target = self.import_target(op, tenant).await?;
        let mut input = input_of(op);
        let mut bookmark = input.import_bookmark.clone();
        if bookmark.is_none() {
            if !user_tables(&self.api, &target).await?.is_empty() {
                return Ok(StepOutcome::Done);
            }
            let backup = self.backup_row(op).await?;
            let etag = backup.md5.clone();
            let init = self.api.import(&target, json!({ "action": "init", "etag": etag })).await?;
            let (Some(url), Some(filename)) = (init.upload_url, init.filename) else {
                return Ok(later(format!("import init answered no upload URL: {}", init.error.unwrap_or_default())));
            };
            // D1 checks the upload against `etag`: a damaged object is refused at the ingest.
            if !self.backups.upload_to(&backup.object_key, &url).await? {
                return Err(LifecycleError::Permanent(format!("backup object {} is missing", backup.object_key)));
            }
            let ingest =
                self.api.import(&target, json!({ "action": "ingest", "filename": filename, "etag": etag })).await?;
            if ingest.status.as_deref() == Some("error") || ingest.at_bookmark.is_none() {
                return Ok(later(format!("import ingest: {}", ingest.error.unwrap_or_default())));
            }
            bookmark = ingest.at_bookmark;
            input.import_bookmark = bookmark.clone();
            self.store.set_operation_input(&op.id, &serde_json::to_string(&input).unwrap_or_default()).await?;
        }
        let bookmark = bookmark.unwrap_or_default();
        for _ in 0..IMPORT_POLLS {
            let poll = self.api.import(&target, json!({ "action": "poll", "current_bookmark": bookmark })).await?;
            match poll.status.as_deref() {
                Some("complete") => return Ok(StepOutcome::Done),
                Some("error") => {
                    // Start again from the upload next time (the failed import changed nothing).
                    input.import_bookmark = None;
                    self.store.set_operation_input(&op.id, &serde_json::to_string(&input).unwrap_or_default()).await?;
                    return Ok(later(format!("import failed: {}", poll.error.unwrap_or_default())));
                }
                _ => self.clock.sleep(Duration::from_millis(250)).await,
            }
        }
        Ok(later("import still running"))
    }

    /// Checks the imported database before anything is served from it: stamped for this tenant,
    /// every table of the backup holding the backup's row count; then migrates it to the current
    /// schema (a backup may predate a migration). Through the REST API: it is bound nowhere yet.
    pub(super) async fn check_import(&self, op: &OperationRow, tenant: &TenantRow) -> Result<StepOutcome> {
        let target = self.import_target(op, tenant).await?;
        let backup = self.backup_row(op).await?;
        let slug = TenantSlug::parse(&tenant.slug).map_err(|e| LifecycleError::Permanent(e.to_string()))?;
        let db = RestDatabase { api: &self.api, id: &target };
        match tenant_db::stamp(&db).await {
            Ok(Some(owner)) if owner == tenant.slug => {}
            Ok(other) => {
                return Err(LifecycleError::Permanent(format!("the imported database is stamped for {other:?}")));
            }
            Err(e) => return Err(LifecycleError::TenantDatabase(e)),
        }
        let want: BTreeMap<String, u64> = serde_json::from_str(&backup.row_counts).unwrap_or_default();
        if !want.is_empty() {
            // One statement per table, in one batch (D1 caps the terms of a compound SELECT).
            let counts: Vec<(String, Vec<Value>)> = want
                .keys()
                .map(|t| {
                    (format!("SELECT '{}' AS t, count(*) AS n FROM {}", t.replace('\'', "''"), quoted(t)), Vec::new())
                })
                .collect();
            let result = self.api.query_batch(&target, &counts).await.map_err(refused_is_permanent)?;
            let got: BTreeMap<String, u64> = result
                .into_iter()
                .flat_map(|r| r.results)
                .filter_map(|row| Some((row.get("t")?.as_str()?.to_owned(), row.get("n")?.as_u64()?)))
                .collect();
            if got != want {
                return Err(LifecycleError::Permanent(format!(
                    "the imported database does not hold the backup's rows: want {want:?}, found {got:?}"
                )));
            }
        }
        let version = match tenant_db::prepare(&db, &slug).await {
            Ok(v) => v as i64,
            Err(e) if e.is_transient() => return Ok(later(format!("migrating the imported database: {e}"))),
            Err(e) => return Err(LifecycleError::Permanent(e.to_string())),
        };
        if op.kind == OperationKind::Undelete {
            self.store.set_schema_version(&tenant.slug, version as usize).await?;
        } else {
            let mut input = input_of(op);
            input.schema_version = Some(version);
            self.store.set_operation_input(&op.id, &serde_json::to_string(&input).unwrap_or_default()).await?;
        }
        Ok(StepOutcome::Done)
    }

    /// Points the tenant at the restored database (its old one kept as a spare) and converges its
    /// binding there.
    pub(super) async fn switch(&self, op: &OperationRow, tenant: &TenantRow, fence: &Fence<'_>) -> Result<StepOutcome> {
        let spare = self.spare_or_switched(op, tenant).await?;
        if let Some((name, id)) = spare {
            let version = input_of(op).schema_version.unwrap_or(tenant.schema_version);
            let keep_until = self.clock.now_ms() as i64 + self.settings.backups.keep_replaced_ms;
            if !self.store.switch_database(&tenant.slug, &op.id, fence, &name, &id, version, keep_until).await? {
                return Ok(later("the tenant changed while its database was switched"));
            }
        }
        self.bindings_step(home(tenant)).await
    }

    /// The spare to switch to, or `None` when the switch already landed (its row is gone and the
    /// tenant names the database it imported into).
    async fn spare_or_switched(&self, op: &OperationRow, tenant: &TenantRow) -> Result<Option<(String, String)>> {
        match self.store.restore_spare(&op.id).await? {
            Some(SpareDatabase { name, database_id: Some(id), .. }) => Ok(Some((name, id))),
            Some(_) => Err(LifecycleError::Permanent("the restore's database has no id".into())),
            None if input_of(op).database_name.as_deref() == Some(tenant.database_name.as_str()) => Ok(None),
            None => Err(LifecycleError::Permanent("the restore's database row is gone".into())),
        }
    }
}

/// What a backup stored.
#[derive(Debug, Clone)]
pub struct NewBackupDone {
    pub key: String,
    pub bytes: usize,
    pub sha256: String,
}

/// The tables of database `id` that are the tenant's (not SQLite's or D1's own).
async fn user_tables<T: crate::cloudflare::Transport>(api: &Client<T>, id: &str) -> Result<Vec<String>> {
    let sql =
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_cf_%'";
    let result = api.query(id, sql, &[]).await?;
    Ok(result
        .into_iter()
        .flat_map(|r| r.results)
        .filter_map(|row| row.get("name").and_then(|n| n.as_str()).map(str::to_owned))
        .collect())
}

/// A request the API refuses (4xx, not a rate limit) will be refused again: the restore fails
/// (the tenant is served again, unchanged). Faults and rate limits stay transient.
fn refused_is_permanent(e: CfError) -> LifecycleError {
    match e {
        CfError::Api { .. } | CfError::NotFound { .. } => LifecycleError::Permanent(e.to_string()),
        other => other.into(),
    }
}

/// `2026-11-23T16-42-01-123Z`.
fn steps_iso(now_ms: f64) -> String {
    super::steps::iso_for_key(now_ms)
}

/// An object no backup row names is a stray once it is this old.
const STRAY_AFTER_MS: i64 = 3_600_000;

/// When the backup in object `{slug}/{2026-11-23T16-42-01-123Z}-...` was taken (ms).
fn key_time_ms(key: &str) -> Option<i64> {
    let name = key.split_once('/')?.1;
    let stamp = name.get(..24)?;
    let iso = format!("{}T{}:{}:{}.{}Z", &stamp[..10], &stamp[11..13], &stamp[14..16], &stamp[17..19], &stamp[20..23]);
    chrono::DateTime::parse_from_rfc3339(&iso).ok().map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_times_parse() {
        assert_eq!(super::key_time_ms("acme/2026-11-23T16-42-01-123Z-scheduled-db.sql"), Some(1_795_452_121_123));
        assert_eq!(super::key_time_ms("acme/x.sql"), None);
        assert_eq!(super::key_time_ms("nothing"), None);
    }
}
