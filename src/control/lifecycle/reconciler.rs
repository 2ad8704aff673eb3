//! The bindings reconciler and the scheduled pass (bindings, unfinished operations, strays,
//! orphans, migrations).

use super::*;

/// Scheduled backups a pass takes at most (each is an export, a download and two R2 calls).
const BACKUPS_PER_PASS: u32 = 25;

impl<P: Platform> Lifecycle<P> {
    /// Makes the Worker's tenant bindings exactly the control plane's `bind_wanted` tenants.
    /// `None` when another invocation holds the bindings lease (it will include our rows: it
    /// derives the set after taking the lease).
    pub async fn reconcile_bindings(&self) -> Result<Option<BindingsReport>> {
        self.holding_patiently("bindings", || self.reconcile_bindings_locked()).await
    }

    async fn reconcile_bindings_locked(&self) -> Result<BindingsReport> {
        let mut patches = 0;
        loop {
            let wanted = tenant_bindings(self.store.wanted_bindings(self.clock.now_ms()).await?);
            let current = self.api.get_settings(&self.settings.script).await?.bindings;
            let BindingDiff { missing, extra, wrong_database } = bindings::diff(&current, &wanted);
            let converged = missing.is_empty() && extra.is_empty() && wrong_database.is_empty();
            if converged || patches == 3 {
                return Ok(BindingsReport { converged, patches, wanted: wanted.len(), missing, extra, wrong_database });
            }
            self.api.patch_settings(&self.settings.script, &bindings::desired(&current, &wanted)).await?;
            patches += 1;
        }
    }

    /// Gives every tenant left mid-lifecycle without an operation one (see
    /// `ControlStore::tenants_without_operation`): a `deleting` tenant gets its delete operation
    /// back; a `provisioning` one, whose admin password went with the request that never
    /// recorded it, becomes `failed` (a re-sent create resumes it, a delete tears it down).
    /// Returns the slugs.
    pub(super) async fn adopt_strays(&self) -> Result<Vec<String>> {
        let mut adopted = Vec::new();
        for tenant in self.store.tenants_without_operation(50).await? {
            let acted = match tenant.status {
                TenantStatus::Deleting => {
                    let id = self.new_id(&format!("delete-{}", tenant.slug));
                    self.store.open_stray_delete(&tenant.slug, &id).await?
                }
                _ => {
                    let why = "its create was interrupted before it was recorded; send the create again";
                    self.store.fail_stray_create(&tenant.slug, why).await?
                }
            };
            if acted {
                let detail = json!({ "status": tenant.status });
                let holder = &self.settings.holder;
                self.store.audit("reconciler", "tenant.adopted", Some(&tenant.slug), holder, &detail).await?;
                adopted.push(tenant.slug);
            }
        }
        Ok(adopted)
    }

    /// The scheduled pass: bindings, every unfinished operation (bounded), orphans, one bounded
    /// migration pass.
    pub async fn reconcile_all(&self) -> Result<Value> {
        self.pass(true).await
    }

    /// The cron's pass: [`Self::reconcile_all`], with the orphan scan (which lists every
    /// database of the account: 50 API calls at 50,000 databases) at most every
    /// [`ORPHAN_SCAN_MS`].
    pub async fn scheduled_pass(&self) -> Result<Value> {
        // Whole milliseconds (an integer parse: a float parser would weigh 5 KB of wasm).
        let last = self.store.platform_value("orphans_scanned_at").await?.and_then(|v| v.parse::<i64>().ok());
        let due = last.is_none_or(|at| self.clock.now_ms() - at as f64 >= ORPHAN_SCAN_MS);
        self.pass(due).await
    }

    /// The main Worker's reconcile for the scheduled pass. A binding set the API refuses (e.g. over
    /// a script's limit) must not stop the pass: the operations it runs fail the creates that
    /// asked for too much, and the set shrinks to fit.
    async fn reconcile_main_or_log(&self) -> Option<BindingsReport> {
        self.reconcile_main().await.unwrap_or_else(|e| {
            log::warn(&format!("reconcile: the main Worker's bindings: {e}"));
            None
        })
    }

    async fn pass(&self, scan_orphans: bool) -> Result<Value> {
        let strays = self.adopt_strays().await?;
        let bindings = self.reconcile_main_or_log().await;
        // Every host is checked against its wanted set once a pass (drift, e.g. a hand edit), not
        // only the ones the control plane knows changed.
        let mut hosts = Vec::new();
        for host in self.store.hosts().await? {
            hosts.push((host.name.clone(), self.check_host(&host.name).await?));
        }
        let mut finished = 0;
        let mut pending = Vec::new();
        // A lease held by a runner that died (a crash, a cut invocation) lapses within LEASE_MS:
        // operations found busy are tried once more after that, so the first pass after a crash
        // runs them instead of leaving them to the next cron. A live holder keeps renewing its
        // lease and is left alone.
        let mut ops = self.store.unfinished_operations(50).await?;
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
                    Progress::Pending(wait) => wait.to_string(),
                    Progress::Failed(reason) => reason,
                };
                pending.push(json!({ "tenant": op.tenant_slug, "kind": op.kind, "reason": reason }));
            }
            if busy.is_empty() {
                break;
            }
            self.clock.sleep(Duration::from_millis(LEASE_MS as u64)).await;
            ops = busy;
        }
        // Binding changes made by the operations above are checked once more.
        let bindings_after = self.reconcile_main_or_log().await;
        let hosts_after = self.reconcile_dirty_hosts().await?;
        // The upgrade from the single-script layout, a bounded batch a pass.
        let moved = self.move_from_main(100).await?;
        let ((orphans, removed), (orphan_scripts, removed_scripts)) = if scan_orphans {
            let found = (self.orphans().await?, self.orphan_scripts().await?);
            let now = (self.clock.now_ms() as i64).to_string();
            self.store.set_platform_value("orphans_scanned_at", Some(&now)).await?;
            found
        } else {
            Default::default()
        };
        // Restores' spare databases no longer needed, and a bounded slice of scheduled backups.
        let spares_dropped = self.drop_spares().await?;
        let cfg = &self.settings.backups;
        let due_before = self.clock.now_ms() as i64 - cfg.interval_ms;
        let backups = self.backup_pass(BACKUPS_PER_PASS, cfg.concurrency, due_before, None).await?;
        // One bounded migration pass per run, continuing where the last run stopped (so tenants
        // that keep failing at the front never starve the rest): a fleet catches up run by run.
        let cursor = self.store.platform_value("fleet_cursor").await?.unwrap_or_default();
        let migrations = crate::control::fleet::migrate_pass(
            &self.store,
            &self.bindings,
            &cursor,
            50,
            self.settings.migration_concurrency,
        )
        .await?;
        self.store.set_platform_value("fleet_cursor", migrations.next.as_deref()).await?;
        // The next few tenants' audit chains verified from their anchors, and anchored anew.
        let anchors = self.anchor_pass(super::ANCHORS_PER_PASS, self.settings.migration_concurrency).await?;
        Ok(json!({
            "bindings": bindings_after.or(bindings),
            "hosts": host_reports(hosts, hosts_after),
            "moved_to_hosts": moved,
            "operations": { "finished": finished, "unfinished": pending, "adopted": strays },
            "orphans": {
                "scanned": scan_orphans,
                "found": orphans,
                "removed": removed,
                "scripts": { "found": orphan_scripts, "removed": removed_scripts },
            },
            "migrations": { "processed": migrations.processed, "failed": migrations.failed.len(), "more": migrations.next.is_some() },
            "backups": { "taken": backups.succeeded, "failed": backups.failed, "remaining": backups.remaining },
            "spare_databases_dropped": spares_dropped,
            "audit_anchors": anchors,
        }))
    }
}

/// Each reconciled host's last report.
fn host_reports(before: Vec<(String, Option<BindingsReport>)>, after: Vec<(String, Option<BindingsReport>)>) -> Value {
    let mut out = serde_json::Map::new();
    for (name, report) in before.into_iter().chain(after) {
        out.insert(name, json!(report));
    }
    Value::Object(out)
}
