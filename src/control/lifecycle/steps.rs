//! The steps of the create and delete sagas; each is idempotent.

use super::*;

impl Lifecycle<'_> {
    pub(super) async fn find_or_create_database(&self, tenant: &TenantRow) -> Result<StepOutcome, StepError> {
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

    pub(super) async fn applied(&self, id: &str) -> Result<Vec<String>, StepError> {
        let rows = self.api.query(id, "SELECT name FROM d1_migrations ORDER BY id", &[]).await?;
        Ok(rows
            .first()
            .map(|r| {
                r.results.iter().filter_map(|row| row.get("name").and_then(Value::as_str).map(str::to_owned)).collect()
            })
            .unwrap_or_default())
    }

    pub(super) async fn migrate(&self, tenant: &TenantRow) -> Result<StepOutcome, StepError> {
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
    pub(super) async fn check_stamp(&self, id: &str, slug: &str, sql: &str) -> Result<bool, StepError> {
        let rows = self.api.query(id, sql, &[]).await?;
        match rows.first().and_then(|r| r.results.first()).and_then(|row| row.get("value")).and_then(Value::as_str) {
            None => Ok(false),
            Some(found) if found == slug => Ok(true),
            Some(found) => Err(StepError::Permanent(format!("the database is stamped for tenant {found}"))),
        }
    }

    pub(super) async fn seed(&self, op: &OperationRow, tenant: &TenantRow) -> Result<StepOutcome, StepError> {
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

    pub(super) async fn bindings_step(&self) -> Result<StepOutcome, StepError> {
        match self.reconcile_bindings().await? {
            Some(report) if report.converged => Ok(StepOutcome::Done),
            Some(_) => Ok(StepOutcome::Later("the binding set did not converge yet".into())),
            None => Ok(StepOutcome::Later("another invocation is changing bindings".into())),
        }
    }

    /// Checks, from this invocation's bindings, that the tenant's database answers at the
    /// expected schema. A binding added by this same invocation is not visible to it: that is
    /// the common "not live yet" case, finished by the next touch.
    pub(super) async fn verify(&self, tenant: &TenantRow) -> Result<StepOutcome, StepError> {
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
                let entities = crate::control::fleet::Entities::load(&self.db).await?;
                let db = self.env.d1(binding.as_str())?;
                if let Err(e) = crate::control::fleet::sync_entities(&db, &entities).await {
                    return Ok(StepOutcome::Later(format!("syncing roles: {e}")));
                }
                crate::control::fleet::record_sync(&self.db, &tenant.slug, entities.version, None).await;
                Ok(StepOutcome::Done)
            }
            Err(e) => Ok(StepOutcome::Later(format!("binding answers but is not ready: {e}"))),
        }
    }

    /// The tenant's database id: the recorded one, or (a create cut short between creating the
    /// database and recording it) the one found by its deterministic name, recorded now.
    pub(super) async fn resolve_database(&self, tenant: &TenantRow) -> Result<Option<String>, StepError> {
        if let Some(id) = &tenant.database_id {
            return Ok(Some(id.clone()));
        }
        let found = self.api.find_database(&tenant.database_name).await?;
        if let Some(db) = &found {
            store::set_database(&self.db, &tenant.slug, &db.uuid).await?;
        }
        Ok(found.map(|db| db.uuid))
    }

    pub(super) async fn backup(&self, tenant: &TenantRow) -> Result<StepOutcome, StepError> {
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
}
