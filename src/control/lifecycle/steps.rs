//! The steps of the create and delete sagas; each is idempotent.

use super::*;
use crate::store::tenant_db::NotReady;

impl<P: Platform> Lifecycle<P> {
    /// The tenant's database by its deterministic name: created, or, when the name is taken (a
    /// lost answer to an earlier attempt, a concurrent runner, a leftover), found. The name is the
    /// idempotency key, so the create goes first and the lookup happens only on a conflict: one
    /// API call in the common case instead of two. A database found rather than made is never
    /// taken over if it is stamped for another tenant (checked before it is bound anywhere).
    pub(super) async fn find_or_create_database(&self, tenant: &TenantRow) -> Result<StepOutcome> {
        let name = tenant.database_name.as_str();
        let found = match self.api.create_database(name).await {
            Ok(db) => db,
            Err(CfError::AlreadyExists { .. }) => match self.api.find_database(name).await? {
                Some(db) => {
                    self.refuse_foreign(tenant, &db.uuid).await?;
                    db
                }
                None => return Ok(later(format!("{name} exists but is not listed yet"))),
            },
            Err(e) => return Err(e.into()),
        };
        self.store.set_database(&tenant.slug, &found.uuid).await?;
        Ok(StepOutcome::Done)
    }

    /// Fails the create for good if database `id` is stamped for another tenant.
    async fn refuse_foreign(&self, tenant: &TenantRow, id: &str) -> Result<()> {
        let db = RestDatabase { api: &self.api, id };
        match tenant_db::stamp(&db).await {
            Ok(Some(owner)) if owner != tenant.slug => {
                Err(LifecycleError::Permanent(format!("the database is stamped for tenant {owner}")))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(LifecycleError::TenantDatabase(e)),
        }
    }

    /// Migrates and stamps the new database: through its binding on its host (the binding was
    /// just asked for; until it is live the step waits), or through the REST API without hosts.
    pub(super) async fn migrate(&self, tenant: &TenantRow) -> Result<StepOutcome> {
        let slug = parse_slug(tenant)?;
        if let Home::Host(host) = home(tenant) {
            let Some(db) = self.tenant_database(Home::Host(host), &slug) else {
                return Ok(StepOutcome::Later(Wait::BindingNotLive));
            };
            return match tenant_db::prepare(&db, &slug).await {
                Ok(version) => {
                    self.store.set_schema_version(&tenant.slug, version).await?;
                    Ok(StepOutcome::Done)
                }
                Err(e) if e.is_not_bound() => Ok(StepOutcome::Later(Wait::BindingNotLive)),
                Err(e) if e.is_transient() => Ok(later(format!("migrating through {host}: {e}"))),
                Err(e) => Err(LifecycleError::Permanent(e.to_string())),
            };
        }
        let id = database_id(tenant)?;
        let db = RestDatabase { api: &self.api, id };
        match tenant_db::prepare(&db, &slug).await {
            Ok(version) => {
                self.store.set_schema_version(&tenant.slug, version).await?;
                Ok(StepOutcome::Done)
            }
            Err(e) if e.is_transient() => {
                Err(LifecycleError::TenantDatabase(crate::store::sql::SqlError::unreachable(e.to_string())))
            }
            Err(e) => Err(LifecycleError::Permanent(e.to_string())),
        }
    }

    pub(super) async fn seed(&self, op: &OperationRow, tenant: &TenantRow) -> Result<StepOutcome> {
        match home(tenant) {
            Home::Host(host) => {
                let Some(db) = self.tenant_database(Home::Host(host), &parse_slug(tenant)?) else {
                    return Ok(StepOutcome::Later(Wait::BindingNotLive));
                };
                self.seed_into(op, &db).await
            }
            Home::Main => {
                let db = RestDatabase { api: &self.api, id: database_id(tenant)? };
                self.seed_into(op, &db).await
            }
        }
    }

    async fn seed_into<S: Sql>(&self, op: &OperationRow, db: &S) -> Result<StepOutcome> {
        let mut input: CreateInput = serde_json::from_str(&op.input).unwrap_or_default();
        let tenant_error = LifecycleError::TenantDatabase;
        if let Some(hash) = &input.admin_password_hash {
            db.run(crate::sql!(
                "INSERT INTO users (email, password_hash, role) VALUES (?1, ?2, 'admin') ON CONFLICT (email) DO NOTHING",
                input.admin_email.as_str(),
                hash.as_str()
            ))
            .await
            .map_err(tenant_error)?;
        }
        #[derive(Deserialize)]
        struct Count {
            n: i64,
        }
        let admins = db
            .first::<Count>(crate::sql!(
                "SELECT count(*) AS n FROM users WHERE email = ?1 AND role = 'admin'",
                input.admin_email.as_str()
            ))
            .await
            .map_err(tenant_error)?
            .map_or(0, |c| c.n);
        if admins == 0 {
            return Err(LifecycleError::Permanent(
                "the first admin could not be seeded (no password hash left to seed)".into(),
            ));
        }
        // The hash is not needed any more: do not keep it in the control plane.
        input.admin_password_hash = None;
        self.store.set_operation_input(&op.id, &serde_json::to_string(&input).unwrap_or_default()).await?;
        Ok(StepOutcome::Done)
    }

    pub(super) async fn bindings_step(&self, home: Home<'_>) -> Result<StepOutcome> {
        let report = match home {
            Home::Main => self.reconcile_bindings().await?,
            Home::Host(host) => self.reconcile_host(host).await?,
        };
        match report {
            Some(report) if report.converged => Ok(StepOutcome::Done),
            Some(_) => Ok(later("the binding set did not converge yet")),
            None => Ok(later("another invocation is changing bindings")),
        }
    }

    /// Checks, from this invocation's bindings, that the tenant's database answers at the
    /// expected schema. A binding added by this same invocation is not visible to it: that is
    /// the common "not live yet" case, finished by the next touch.
    pub(super) async fn verify(&self, tenant: &TenantRow) -> Result<StepOutcome> {
        let slug = parse_slug(tenant)?;
        let binding = BindingName::for_tenant(&slug);
        if let Home::Host(host) = home(tenant) {
            if self.store.host(host).await?.is_some_and(|h| h.applied_gen < h.wanted_gen) {
                self.reconcile_host(host).await?;
            }
        }
        let Some(db) = self.bindings.database(home(tenant), &binding) else {
            if let Home::Host(_) = home(tenant) {
                // Not visible to this invocation yet; its host was reconciled above if needed.
                return Ok(StepOutcome::Later(Wait::BindingNotLive));
            }
            // Not bound here. If the settings do not hold it either, bind again.
            let settings = self.api.get_settings(&self.settings.script).await?;
            let want = [TenantBinding { binding, database_id: database_id(tenant)?.to_owned() }];
            if !bindings::diff(&settings.bindings, &want).missing.is_empty() {
                self.reconcile_bindings().await?;
            }
            return Ok(StepOutcome::Later(Wait::BindingNotLive));
        };
        match tenant_db::TenantDb::open(db, slug, &self.store).await {
            Ok(opened) => {
                // New tenants get the platform's roles before they go live.
                let entities = self.store.entities().await?;
                if let Err(e) = tenant_db::sync_roles(opened.db(), &entities.roles).await {
                    return Ok(later(format!("syncing roles: {e}")));
                }
                self.store.record_sync(&tenant.slug, entities.version, None).await?;
                Ok(StepOutcome::Done)
            }
            Err(NotReady::Unreachable(e)) if e.not_bound => {
                // Its host does not hold it: have the host checked again at its next reconcile.
                if let Home::Host(host) = home(tenant) {
                    self.store.touch_host(host).await?;
                }
                Ok(StepOutcome::Later(Wait::BindingNotLive))
            }
            Err(e) => Ok(later(format!("binding answers but is not ready: {e}"))),
        }
    }

    /// The tenant's database id: the recorded one, or (a create cut short between creating the
    /// database and recording it) the one found by its deterministic name, recorded now.
    pub(super) async fn resolve_database(&self, tenant: &TenantRow) -> Result<Option<String>> {
        if let Some(id) = &tenant.database_id {
            return Ok(Some(id.clone()));
        }
        let found = self.api.find_database(&tenant.database_name).await?;
        if let Some(db) = &found {
            self.store.set_database(&tenant.slug, &db.uuid).await?;
        }
        Ok(found.map(|db| db.uuid))
    }

    pub(super) async fn backup(&self, tenant: &TenantRow) -> Result<StepOutcome> {
        let Some(id) = self.resolve_database(tenant).await? else {
            // Nothing was ever created: nothing to back up.
            return Ok(StepOutcome::Done);
        };
        let prefix = format!("r2://{}/", self.backups.bucket());
        if let Some(key) = tenant.backup_location.as_deref().and_then(|l| l.strip_prefix(prefix.as_str())) {
            if self.backups.exists(key).await? {
                return Ok(StepOutcome::Done);
            }
        }
        match self.take_backup(tenant, &id, "delete").await? {
            Ok(done) => {
                self.store.set_backup(&tenant.slug, &format!("{prefix}{}", done.key), done.bytes, &done.sha256).await?;
                Ok(StepOutcome::Done)
            }
            Err(reason) => Ok(later(reason)),
        }
    }
}

fn parse_slug(tenant: &TenantRow) -> Result<TenantSlug> {
    TenantSlug::parse(&tenant.slug).map_err(|e| LifecycleError::Permanent(e.to_string()))
}

/// `2026-11-23T16-42-01-123Z`: an ISO 8601 time usable in an object key.
pub(super) fn iso_for_key(now_ms: f64) -> String {
    chrono::DateTime::from_timestamp_millis(now_ms as i64)
        .map(|t| t.format("%Y-%m-%dT%H-%M-%S-%3fZ").to_string())
        .unwrap_or_else(|| format!("{}", now_ms as i64))
}
