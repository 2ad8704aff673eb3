//! The tenant lifecycle: the create and delete sagas, the bindings reconciler and the orphan scan.
//!
//! A saga is a row of `operations`; [`Lifecycle::run`] takes its lease, runs its steps from the
//! first one not done, and records each step as it completes. A step that cannot finish now (a
//! Cloudflare API fault that outlasted the retry budget, a binding not live yet, another
//! invocation holding the bindings lease) leaves the operation open; re-sending the request, a
//! `GET` of the tenant, or the scheduled reconciler runs it again from where it stopped. Every
//! step is idempotent, so running one twice is harmless.
//!
//! **Leases.** A runner holds a short lease (`tenant:{slug}` for a saga, `bindings` for a
//! settings PATCH cycle) and renews it every [`HEARTBEAT_MS`] while it works. A holder is known to
//! be gone when its lease has not been renewed for [`LEASE_MS`]: a crashed invocation stops
//! renewing, so the next runner takes over seconds after a crash, not a minute. A runner that
//! stalls past its lease (its renewal failed) stops at once, and every write it makes to its
//! operation is fenced by the lease (`store::Fence`), so it cannot overwrite its successor.

use std::time::Duration;

use futures_util::future::{self, Either};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use worker::{D1Database, Env};

use super::store::{self, Fence, OperationRow, TenantRow};
use crate::cloudflare::fetch::FetchTransport;
use crate::cloudflare::{ApiToken, CfError, Client};
use crate::core::bindings::{self, BindingDiff, TenantBinding};
use crate::core::lifecycle::{OperationKind, Step, TenantStatus};
use crate::core::migrations::{self, LedgerState};
use crate::core::names::{BindingName, DatabaseName, DatabasePrefix};
use crate::core::retry::RetryPolicy;
use crate::core::slug::TenantSlug;
use crate::http::ApiError;
use crate::tenant::TenantDb;

/// How long a lease outlives its holder's last renewal.
pub const LEASE_MS: f64 = 6_000.0;
/// How often a runner renews its lease while it works.
pub const HEARTBEAT_MS: u64 = 1_500;
/// Export polls within one invocation before leaving the rest to the next.
const EXPORT_POLLS: u32 = 20;
/// Why a create's verify step waits: its binding is not visible to the invocation that added it.
pub const NOT_LIVE_YET: &str = "binding not live in this Worker version yet";

/// The R2 binding backups go to.
pub const BACKUPS_BINDING: &str = "BACKUPS";

/// The input a create operation carries until the admin is seeded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateInput {
    pub admin_email: String,
    /// Removed once the admin user exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_password_hash: Option<String>,
}

/// What a step did.
enum StepOutcome {
    Done,
    /// Not finished; run again later. The reason is recorded.
    Later(String),
}

/// How far an operation got in this invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Finished,
    /// Open, to be continued (by a re-send, a GET, or the reconciler).
    Pending(String),
    /// Closed for good; the tenant holds the error.
    Failed(String),
    /// Someone else is running it right now.
    Busy,
}

/// The outcome of one bindings reconciliation.
#[derive(Debug, Clone, Serialize)]
pub struct BindingsReport {
    pub converged: bool,
    pub patches: u32,
    pub wanted: usize,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub wrong_database: Vec<String>,
}

/// Everything the lifecycle needs, built once per invocation from `Env`.
pub struct Lifecycle<'a> {
    pub env: &'a Env,
    pub db: D1Database,
    pub api: Client<FetchTransport>,
    pub script: String,
    pub prefix: DatabasePrefix,
    /// Who holds leases taken by this invocation.
    pub holder: String,
    pub remove_orphans: bool,
}

fn var(env: &Env, name: &str) -> Option<String> {
    env.var(name).ok().map(|v| v.to_string()).filter(|v| !v.is_empty())
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

impl<'a> Lifecycle<'a> {
    /// Reads the configuration; a missing piece is a deployment error (503, logged).
    pub fn from_env(env: &'a Env) -> Result<Self, ApiError> {
        let missing = |what: &str| {
            ApiError::Unavailable {
                code: "lifecycle_not_configured",
                message: "tenant provisioning is not configured on this deployment".into(),
                retry_after: 60,
            }
            .inspect_log(&format!("lifecycle: {what} is not set"))
        };
        let token = env
            .secret("CLOUDFLARE_API_TOKEN")
            .map(|s| s.to_string())
            .map_err(|_| missing("secret CLOUDFLARE_API_TOKEN"))?;
        let account = var(env, "CLOUDFLARE_ACCOUNT_ID").ok_or_else(|| missing("var CLOUDFLARE_ACCOUNT_ID"))?;
        let base = var(env, "CLOUDFLARE_API_BASE_URL").unwrap_or_else(|| "https://api.cloudflare.com/client/v4".into());
        let config = crate::http::config(env)?;
        let transport = FetchTransport { timeout: Duration::from_secs(10) };
        Ok(Self {
            env,
            db: env.d1(crate::control::CONTROL_BINDING).map_err(ApiError::internal)?,
            api: Client::new(transport, &base, &account, ApiToken::new(token), RetryPolicy::default()),
            script: var(env, "WORKER_SCRIPT_NAME").unwrap_or_else(|| "tenantry".into()),
            prefix: config.db_prefix,
            holder: crate::crypto::random_id()?,
            remove_orphans: var(env, "ORPHAN_POLICY").as_deref() == Some("remove"),
        })
    }

    /// Runs `work` while holding lease `name`, renewing it every [`HEARTBEAT_MS`]. `None` when
    /// the lease is held by someone else, or when it was lost midway (then `work` is dropped
    /// where it stood: every step is idempotent, and the successor runs it again).
    async fn holding<T>(&self, name: &str, work: impl std::future::Future<Output = T>) -> Result<Option<T>, ApiError> {
        if !store::acquire_lease(&self.db, name, &self.holder, now_ms(), LEASE_MS).await? {
            return Ok(None);
        }
        let heartbeat = async {
            loop {
                self.api.sleep(Duration::from_millis(HEARTBEAT_MS)).await;
                match store::renew_lease(&self.db, name, &self.holder, now_ms(), LEASE_MS).await {
                    Ok(true) => {}
                    Ok(false) => {
                        worker::console_warn!("lease {name}: lost by {} (it stalled past {LEASE_MS} ms)", self.holder);
                        return;
                    }
                    // A failed renewal is retried at the next beat; the lease lasts several beats.
                    Err(e) => worker::console_warn!("lease {name}: renewal failed: {e}"),
                }
            }
        };
        let outcome = match future::select(std::pin::pin!(work), std::pin::pin!(heartbeat)).await {
            Either::Left((out, _)) => Some(out),
            Either::Right(((), _)) => None,
        };
        store::release_lease(&self.db, name, &self.holder).await?;
        Ok(outcome)
    }

    /// Runs `op` from its first step not done, as far as it can go in this invocation.
    ///
    /// The lease is per tenant, not per operation: a delete never runs while a create of the same
    /// tenant is mid-step (it would miss a database that step is about to record).
    pub async fn run(&self, op: &OperationRow) -> Result<Progress, ApiError> {
        let lease = format!("tenant:{}", op.tenant_slug);
        let fence = Fence { lease: &lease, holder: &self.holder };
        match self.holding(&lease, self.run_steps(op, &fence)).await? {
            Some(outcome) => outcome,
            None => Ok(Progress::Busy),
        }
    }

    async fn run_steps(&self, op: &OperationRow, fence: &Fence<'_>) -> Result<Progress, ApiError> {
        let kind =
            op.kind().ok_or_else(|| ApiError::internal(format!("operation {} has unknown kind {}", op.id, op.kind)))?;
        // Re-read: another runner may have moved it on since the caller loaded it.
        let Some(op) = store::get_operation(&self.db, &op.id).await? else {
            return Ok(Progress::Failed("gone".into()));
        };
        if !matches!(op.state.as_str(), "pending" | "running") {
            return Ok(if op.state == "succeeded" {
                Progress::Finished
            } else {
                Progress::Failed(op.last_error.unwrap_or_default())
            });
        }
        // A fenced write that did not land: the lease was lost or the operation closed meanwhile
        // (a delete superseded it). Either way this runner stops; whoever changed it carries on.
        let lost = || Ok(Progress::Busy);
        let mut done = op.done_steps();
        while let Some(step) = kind.next_step(&done) {
            let Some(tenant) = store::get_tenant(&self.db, &op.tenant_slug).await? else {
                store::abandon_operation(&self.db, &op.id, fence, "tenant row vanished").await?;
                return Ok(Progress::Failed("tenant row vanished".into()));
            };
            // A create is abandoned as soon as the tenant is no longer provisioning (deleted meanwhile).
            if kind == OperationKind::Create && tenant.status() != TenantStatus::Provisioning {
                let why = format!("tenant is {}, not provisioning", tenant.status);
                store::abandon_operation(&self.db, &op.id, fence, &why).await?;
                return Ok(Progress::Failed(why));
            }
            match self.step(&op, &tenant, step).await {
                Ok(StepOutcome::Done) => {
                    done.push(step);
                    if !store::record_step(&self.db, &op.id, fence, &done, kind.next_step(&done)).await? {
                        return lost();
                    }
                }
                Ok(StepOutcome::Later(reason)) => {
                    if !store::record_failure(&self.db, &op.id, fence, &reason).await? {
                        return lost();
                    }
                    return Ok(Progress::Pending(reason));
                }
                Err(e) if e.is_transient() => {
                    let reason = format!("{} step: {e}", store::step_name(step));
                    if !store::record_failure(&self.db, &op.id, fence, &reason).await? {
                        return lost();
                    }
                    store::set_error(&self.db, &op.tenant_slug, Some(&reason)).await?;
                    return Ok(Progress::Pending(reason));
                }
                Err(e) => {
                    let reason = format!("{} step: {e}", store::step_name(step));
                    return self.fail(&op, kind, fence, &reason).await;
                }
            }
        }
        let slug = op.tenant_slug.as_str();
        let (from, to) = match kind {
            OperationKind::Create => (TenantStatus::Provisioning, TenantStatus::Active),
            OperationKind::Delete => (TenantStatus::Deleting, TenantStatus::Deleted),
        };
        if store::complete_operation(&self.db, &op.id, fence, slug, from, to).await? {
            return Ok(Progress::Finished);
        }
        // Not completed: the tenant left `from` meanwhile (a delete of a create), or the lease was
        // lost. The next run re-reads and abandons or finishes it.
        Ok(Progress::Pending(format!("tenant {slug} changed while its {} finished", kind.as_str())))
    }

    /// A permanent failure: a create marks the tenant `failed` (a re-send resumes, a delete
    /// tears down); a delete stays `deleting` with the error, for an operator to look at.
    async fn fail(
        &self,
        op: &OperationRow,
        kind: OperationKind,
        fence: &Fence<'_>,
        reason: &str,
    ) -> Result<Progress, ApiError> {
        worker::console_error!("operation {} ({}) on {} failed: {reason}", op.id, op.kind, op.tenant_slug);
        match kind {
            OperationKind::Create => {
                if !store::fail_create(&self.db, &op.id, fence, &op.tenant_slug, reason).await? {
                    return Ok(Progress::Busy);
                }
                Ok(Progress::Failed(reason.to_owned()))
            }
            OperationKind::Delete => {
                store::set_error(&self.db, &op.tenant_slug, Some(reason)).await?;
                if !store::record_failure(&self.db, &op.id, fence, reason).await? {
                    return Ok(Progress::Busy);
                }
                Ok(Progress::Pending(reason.to_owned()))
            }
        }
    }

    async fn step(&self, op: &OperationRow, tenant: &TenantRow, step: Step) -> Result<StepOutcome, StepError> {
        match step {
            Step::Database => self.find_or_create_database(tenant).await,
            Step::Migrations => self.migrate(tenant).await,
            Step::Seed => self.seed(op, tenant).await,
            Step::Bind => {
                if !store::set_bind_wanted_if(&self.db, &tenant.slug, true, TenantStatus::Provisioning).await? {
                    return Err(StepError::Permanent("tenant left provisioning".into()));
                }
                self.bindings_step().await
            }
            Step::Verify => self.verify(tenant).await,
            Step::Backup => self.backup(tenant).await,
            Step::Unbind => {
                if !store::set_bind_wanted_if(&self.db, &tenant.slug, false, TenantStatus::Deleting).await? {
                    return Err(StepError::Permanent("tenant left deleting".into()));
                }
                self.bindings_step().await
            }
            Step::DropDatabase => {
                if let Some(id) = self.resolve_database(tenant).await? {
                    self.api.delete_database(&id).await?;
                }
                Ok(StepOutcome::Done)
            }
        }
    }

    async fn find_or_create_database(&self, tenant: &TenantRow) -> Result<StepOutcome, StepError> {
        let name = tenant.database_name.as_str();
        let found = match self.api.find_database(name).await? {
            Some(db) => db,
            None => match self.api.create_database(name).await {
                Ok(db) => db,
                // Someone (a lost earlier answer, a concurrent runner) created it: look again.
                Err(CfError::AlreadyExists { .. }) => match self.api.find_database(name).await? {
                    Some(db) => db,
                    None => return Ok(StepOutcome::Later(format!("{name} exists but is not listed yet"))),
                },
                Err(e) => return Err(e.into()),
            },
        };
        store::set_database(&self.db, &tenant.slug, &found.uuid).await?;
        Ok(StepOutcome::Done)
    }

    async fn applied(&self, id: &str) -> Result<Vec<String>, StepError> {
        let rows = self.api.query(id, "SELECT name FROM d1_migrations ORDER BY id", &[]).await?;
        Ok(rows
            .first()
            .map(|r| {
                r.results.iter().filter_map(|row| row.get("name").and_then(Value::as_str).map(str::to_owned)).collect()
            })
            .unwrap_or_default())
    }

    async fn migrate(&self, tenant: &TenantRow) -> Result<StepOutcome, StepError> {
        let id = database_id(tenant)?;
        self.api.query(id, migrations::LEDGER_DDL, &[]).await?;
        // A database stamped for another tenant is never taken over (checked before any change).
        let stamp_sql = "SELECT value FROM tenant_meta WHERE key = 'slug' \
             AND EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tenant_meta')";
        let exists = "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'tenant_meta'";
        let has_meta = self
            .api
            .query(id, exists, &[])
            .await?
            .first()
            .and_then(|r| r.results.first())
            .and_then(|row| row.get("n"))
            .and_then(Value::as_u64)
            == Some(1);
        if has_meta {
            self.check_stamp(id, &tenant.slug, stamp_sql).await?;
        }
        loop {
            let applied = self.applied(id).await?;
            let pending = match migrations::compare(migrations::TENANT, &applied) {
                LedgerState::Current => break,
                LedgerState::Behind { pending } => pending,
                LedgerState::Diverged { unknown } => {
                    return Err(StepError::Permanent(format!("tenant database has unknown migrations {unknown:?}")))
                }
            };
            let migration =
                migrations::TENANT.iter().find(|m| m.name == pending[0]).expect("pending names come from TENANT");
            // The migration and its ledger row in one query: D1 runs it as one transaction.
            let sql = format!(
                "{}\nINSERT INTO d1_migrations (name) VALUES ('{}');",
                migration.sql,
                migration.name.replace('\'', "''")
            );
            if let Err(e) = self.api.query(id, &sql, &[]).await {
                // A lost answer to an applied migration comes back as a ledger conflict: look again.
                if !self.applied(id).await?.iter().any(|n| n == migration.name) {
                    return Err(e.into());
                }
            }
        }
        let insert = "INSERT INTO tenant_meta (key, value) VALUES ('slug', ?1) ON CONFLICT (key) DO NOTHING";
        self.api.query(id, insert, &[json!(tenant.slug)]).await?;
        if !self.check_stamp(id, &tenant.slug, stamp_sql).await? {
            return Err(StepError::Permanent("the database's slug stamp could not be written".into()));
        }
        store::set_schema_version(&self.db, &tenant.slug, migrations::TENANT.len()).await?;
        Ok(StepOutcome::Done)
    }

    /// `true` when the database is stamped with `slug`, `false` when not stamped; an error when
    /// it is stamped with another slug.
    async fn check_stamp(&self, id: &str, slug: &str, sql: &str) -> Result<bool, StepError> {
        let rows = self.api.query(id, sql, &[]).await?;
        match rows.first().and_then(|r| r.results.first()).and_then(|row| row.get("value")).and_then(Value::as_str) {
            None => Ok(false),
            Some(found) if found == slug => Ok(true),
            Some(found) => Err(StepError::Permanent(format!("the database is stamped for tenant {found}"))),
        }
    }

    async fn seed(&self, op: &OperationRow, tenant: &TenantRow) -> Result<StepOutcome, StepError> {
        let id = database_id(tenant)?;
        let mut input: CreateInput = serde_json::from_str(&op.input).unwrap_or_default();
        if let Some(hash) = &input.admin_password_hash {
            let insert = "INSERT INTO users (email, password_hash, role) VALUES (?1, ?2, 'admin') ON CONFLICT (email) DO NOTHING";
            self.api.query(id, insert, &[json!(input.admin_email), json!(hash)]).await?;
        }
        let check = self
            .api
            .query(
                id,
                "SELECT count(*) AS n FROM users WHERE email = ?1 AND role = 'admin'",
                &[json!(input.admin_email)],
            )
            .await?;
        let n = check
            .first()
            .and_then(|r| r.results.first())
            .and_then(|row| row.get("n"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if n == 0 {
            return Err(StepError::Permanent(
                "the first admin could not be seeded (no password hash left to seed)".into(),
            ));
        }
        // The hash is not needed any more: do not keep it in the control plane.
        input.admin_password_hash = None;
        store::set_operation_input(&self.db, &op.id, &serde_json::to_string(&input).unwrap_or_default()).await?;
        Ok(StepOutcome::Done)
    }

    async fn bindings_step(&self) -> Result<StepOutcome, StepError> {
        match self.reconcile_bindings().await? {
            Some(report) if report.converged => Ok(StepOutcome::Done),
            Some(_) => Ok(StepOutcome::Later("the binding set did not converge yet".into())),
            None => Ok(StepOutcome::Later("another invocation is changing bindings".into())),
        }
    }

    /// Checks, from this invocation's bindings, that the tenant's database answers at the
    /// expected schema. A binding added by this same invocation is not visible to it: that is
    /// the common "not live yet" case, finished by the next touch.
    async fn verify(&self, tenant: &TenantRow) -> Result<StepOutcome, StepError> {
        let slug = TenantSlug::parse(&tenant.slug).map_err(|e| StepError::Permanent(e.to_string()))?;
        let binding = BindingName::for_tenant(&slug);
        if self.env.d1(binding.as_str()).is_err() {
            // Not bound here. If the settings do not hold it either, bind again.
            let settings = self.api.get_settings(&self.script).await?;
            let want = [TenantBinding { binding, database_id: database_id(tenant)?.to_owned() }];
            if !bindings::diff(&settings.bindings, &want).missing.is_empty() {
                self.reconcile_bindings().await?;
            }
            return Ok(StepOutcome::Later(NOT_LIVE_YET.into()));
        }
        match TenantDb::open(self.env, slug).await {
            Ok(_) => {
                // New tenants get the platform's roles before they go live.
                let entities = super::fleet::Entities::load(&self.db).await?;
                let db = self.env.d1(binding.as_str())?;
                if let Err(e) = super::fleet::sync_entities(&db, &entities).await {
                    return Ok(StepOutcome::Later(format!("syncing roles: {e}")));
                }
                super::fleet::record_sync(&self.db, &tenant.slug, entities.version, None).await;
                Ok(StepOutcome::Done)
            }
            Err(e) => Ok(StepOutcome::Later(format!("binding answers but is not ready: {e}"))),
        }
    }

    /// The tenant's database id: the recorded one, or (a create cut short between creating the
    /// database and recording it) the one found by its deterministic name, recorded now.
    async fn resolve_database(&self, tenant: &TenantRow) -> Result<Option<String>, StepError> {
        if let Some(id) = &tenant.database_id {
            return Ok(Some(id.clone()));
        }
        let found = self.api.find_database(&tenant.database_name).await?;
        if let Some(db) = &found {
            store::set_database(&self.db, &tenant.slug, &db.uuid).await?;
        }
        Ok(found.map(|db| db.uuid))
    }

    async fn backup(&self, tenant: &TenantRow) -> Result<StepOutcome, StepError> {
        let Some(id) = self.resolve_database(tenant).await? else {
            // Nothing was ever created: nothing to back up.
            return Ok(StepOutcome::Done);
        };
        let id = id.as_str();
        let bucket =
            self.env.bucket(BACKUPS_BINDING).map_err(|_| StepError::Permanent("no BACKUPS bucket is bound".into()))?;
        if let Some(key) = tenant.backup_location.as_deref().and_then(|l| l.strip_prefix("r2://BACKUPS/")) {
            if bucket.head(key).await.map_err(StepError::from_worker)?.is_some() {
                return Ok(StepOutcome::Done);
            }
        }
        let mut poll = self.api.export(id, None).await?;
        for _ in 0..EXPORT_POLLS {
            if poll.status != "active" {
                break;
            }
            self.api.sleep(Duration::from_millis(250)).await;
            let bookmark = poll.at_bookmark.clone().unwrap_or_default();
            poll = self.api.export(id, Some(&bookmark)).await?;
        }
        let url = match (poll.status.as_str(), &poll.result) {
            ("complete", Some(result)) => result.signed_url.clone(),
            ("active", _) => return Ok(StepOutcome::Later("export still running".into())),
            (status, _) => {
                return Ok(StepOutcome::Later(format!("export {status}: {}", poll.error.unwrap_or_default())))
            }
        };
        let dump = self.api.download(&url).await?;
        let sha256 = crate::crypto::sha256_hex(&dump);
        let key = format!(
            "{}/{}-{}.sql",
            tenant.slug,
            js_sys::Date::new_0().to_iso_string().as_string().unwrap_or_default().replace([':', '.'], "-"),
            id
        );
        let mut meta = std::collections::HashMap::new();
        meta.insert("tenant".to_owned(), tenant.slug.clone());
        meta.insert("sha256".to_owned(), sha256.clone());
        meta.insert("database_id".to_owned(), id.to_owned());
        bucket.put(&key, dump.clone()).custom_metadata(meta).execute().await.map_err(StepError::from_worker)?;
        // Verified: the object is there, with the size and checksum of what was downloaded.
        let stored = bucket.get(&key).execute().await.map_err(StepError::from_worker)?;
        let body = match stored.as_ref().and_then(|o| o.body()) {
            Some(body) => body.bytes().await.map_err(StepError::from_worker)?,
            None => return Ok(StepOutcome::Later("backup object not readable yet".into())),
        };
        if crate::crypto::sha256_hex(&body) != sha256 {
            return Ok(StepOutcome::Later("backup object does not match the export".into()));
        }
        store::set_backup(&self.db, &tenant.slug, &format!("r2://BACKUPS/{key}"), dump.len(), &sha256).await?;
        Ok(StepOutcome::Done)
    }

    /// Makes the Worker's tenant bindings exactly the control plane's `bind_wanted` tenants.
    /// `None` when another invocation holds the bindings lease (it will include our rows: it
    /// derives the set after taking the lease).
    pub async fn reconcile_bindings(&self) -> Result<Option<BindingsReport>, StepError> {
        for attempt in 0..20 {
            if attempt > 0 {
                self.api.sleep(Duration::from_millis(150)).await;
            }
            if let Some(result) = self.holding("bindings", self.reconcile_bindings_locked()).await? {
                return result.map(Some);
            }
        }
        Ok(None)
    }

    async fn reconcile_bindings_locked(&self) -> Result<BindingsReport, StepError> {
        let mut patches = 0;
        loop {
            let wanted: Vec<TenantBinding> = store::tenants_to_bind(&self.db)
                .await?
                .into_iter()
                .filter_map(|t| {
                    let slug = TenantSlug::parse(&t.slug).ok()?;
                    Some(TenantBinding { binding: BindingName::for_tenant(&slug), database_id: t.database_id? })
                })
                .collect();
            let current = self.api.get_settings(&self.script).await?.bindings;
            let BindingDiff { missing, extra, wrong_database } = bindings::diff(&current, &wanted);
            let converged = missing.is_empty() && extra.is_empty() && wrong_database.is_empty();
            if converged || patches == 3 {
                return Ok(BindingsReport { converged, patches, wanted: wanted.len(), missing, extra, wrong_database });
            }
            self.api.patch_settings(&self.script, &bindings::desired(&current, &wanted)).await?;
            patches += 1;
        }
    }

    /// Databases with our prefix that no tenant owns. Removed when `ORPHAN_POLICY=remove`.
    pub async fn orphans(&self) -> Result<(Vec<String>, Vec<String>), StepError> {
        let owned = store::owned_database_names(&self.db).await?;
        let control = DatabaseName::control_plane(&self.prefix);
        let orphans: Vec<_> = self
            .api
            .list_databases(self.prefix.as_str())
            .await?
            .into_iter()
            .filter(|d| {
                d.name.starts_with(self.prefix.as_str()) && d.name != control.as_str() && !owned.contains(&d.name)
            })
            .collect();
        let mut removed = Vec::new();
        if self.remove_orphans {
            for db in &orphans {
                self.api.delete_database(&db.uuid).await?;
                store::audit(
                    &self.db,
                    "reconciler",
                    "orphan.removed",
                    None,
                    &self.holder,
                    &json!({ "database": db.name, "id": db.uuid }),
                )
                .await?;
                removed.push(db.name.clone());
            }
        }
        Ok((orphans.into_iter().map(|d| d.name).collect(), removed))
    }

    /// Gives every tenant left mid-lifecycle without an operation one (see
    /// `store::tenants_without_operation`): a `deleting` tenant gets its delete operation back; a
    /// `provisioning` one, whose admin password went with the request that never recorded it,
    /// becomes `failed` (a re-sent create resumes it, a delete tears it down). Returns the slugs.
    async fn adopt_strays(&self) -> Result<Vec<String>, ApiError> {
        let mut adopted = Vec::new();
        for tenant in store::tenants_without_operation(&self.db, 50).await? {
            let acted = match tenant.status() {
                TenantStatus::Deleting => {
                    store::open_stray_delete(&self.db, &tenant.slug, &crate::crypto::random_id()?).await?
                }
                _ => {
                    let why = "its create was interrupted before it was recorded; send the create again";
                    store::fail_stray_create(&self.db, &tenant.slug, why).await?
                }
            };
            if acted {
                store::audit(
                    &self.db,
                    "reconciler",
                    "tenant.adopted",
                    Some(&tenant.slug),
                    &self.holder,
                    &json!({ "status": tenant.status }),
                )
                .await?;
                adopted.push(tenant.slug);
            }
        }
        Ok(adopted)
    }

    /// The scheduled pass: bindings, every unfinished operation (bounded), orphans.
    pub async fn reconcile_all(&self) -> Result<Value, ApiError> {
        let strays = self.adopt_strays().await?;
        let bindings = self.reconcile_bindings().await.map_err(StepError::into_api)?;
        let mut finished = 0;
        let mut pending = Vec::new();
        // A lease held by a runner that died (a crash, a cut invocation) lapses within LEASE_MS:
        // operations found busy are tried once more after that, so the first pass after a crash
        // runs them instead of leaving them to the next cron. A live holder keeps renewing its
        // lease and is left alone.
        let mut ops = store::unfinished_operations(&self.db, 50).await?;
        for last_round in [false, true] {
            let mut busy = Vec::new();
            for op in ops {
                let reason = match self.run(&op).await? {
                    Progress::Finished => {
                        finished += 1;
                        continue;
                    }
                    Progress::Busy if !last_round => {
                        busy.push(op);
                        continue;
                    }
                    Progress::Busy => "busy".to_owned(),
                    Progress::Pending(reason) | Progress::Failed(reason) => reason,
                };
                pending.push(json!({ "tenant": op.tenant_slug, "kind": op.kind, "reason": reason }));
            }
            if busy.is_empty() {
                break;
            }
            self.api.sleep(Duration::from_millis(LEASE_MS as u64)).await;
            ops = busy;
        }
        // Binding changes made by the operations above are checked once more.
        let bindings_after = self.reconcile_bindings().await.map_err(StepError::into_api)?;
        let (orphans, removed) = self.orphans().await.map_err(StepError::into_api)?;
        // One bounded migration pass per run, continuing where the last run stopped (so tenants
        // that keep failing at the front never starve the rest): a fleet catches up run by run.
        let cursor = store::platform_value(&self.db, "fleet_cursor").await?.unwrap_or_default();
        let migrations = super::fleet::migrate_pass(self.env, &self.db, &cursor, 50, 8).await?;
        store::set_platform_value(&self.db, "fleet_cursor", migrations.next.as_deref()).await?;
        Ok(json!({
            "bindings": bindings_after.or(bindings),
            "operations": { "finished": finished, "unfinished": pending, "adopted": strays },
            "orphans": { "found": orphans, "removed": removed },
            "migrations": { "processed": migrations.processed, "failed": migrations.failed.len(), "more": migrations.next.is_some() },
        }))
    }
}

fn database_id(tenant: &TenantRow) -> Result<&str, StepError> {
    tenant.database_id.as_deref().ok_or_else(|| StepError::Permanent("tenant has no database id yet".into()))
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("{0}")]
    Cloudflare(#[from] CfError),
    #[error("{0}")]
    Api(#[from] ApiError),
    #[error("{0}")]
    Permanent(String),
}

impl StepError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Cloudflare(e) => e.is_transient(),
            // Control-plane D1 or R2 trouble: worth trying again later.
            Self::Api(_) => true,
            Self::Permanent(_) => false,
        }
    }

    fn from_worker(e: worker::Error) -> Self {
        Self::Api(ApiError::internal(e))
    }

    pub fn into_api(self) -> ApiError {
        match self {
            Self::Api(e) => e,
            other => ApiError::Unavailable {
                code: "cloudflare_api_unavailable",
                message: "the Cloudflare API could not be reached; retry shortly".into(),
                retry_after: 10,
            }
            .inspect_log(&other.to_string()),
        }
    }
}

impl From<worker::Error> for StepError {
    fn from(e: worker::Error) -> Self {
        Self::from_worker(e)
    }
}
