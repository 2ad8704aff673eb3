//! The saga runner: takes an operation's lease, runs its steps from the first one not done,
//! records each, and ends the operation (done, failed, or open for later).

use super::*;

impl<P: Platform> Lifecycle<P> {
    /// Runs `op` from its first step not done, as far as it can go in this invocation.
    ///
    /// The lease is per tenant, not per operation: a delete never runs while a create of the same
    /// tenant is mid-step (it would miss a database that step is about to record).
    pub async fn run(&self, op: &OperationRow) -> Result<Progress> {
        let lease = format!("tenant:{}", op.tenant_slug);
        let fence = Fence { lease: &lease, holder: &self.settings.holder };
        match self.holding(&lease, self.run_steps(op, &fence)).await? {
            Some(outcome) => outcome,
            None => Ok(Progress::Busy),
        }
    }

    async fn run_steps(&self, op: &OperationRow, fence: &Fence<'_>) -> Result<Progress> {
        let kind = op.kind;
        // Re-read: another runner may have moved it on since the caller loaded it.
        let Some(op) = self.store.operation(&op.id).await? else {
            return Ok(Progress::Failed("gone".into()));
        };
        if !op.state.is_open() {
            return Ok(match op.state {
                crate::core::lifecycle::OperationState::Succeeded => Progress::Finished,
                _ => Progress::Failed(op.last_error.unwrap_or_default()),
            });
        }
        // A fenced write that did not land: the lease was lost or the operation closed meanwhile
        // (a delete superseded it). Either way this runner stops; whoever changed it carries on.
        let lost = || Ok(Progress::Busy);
        let mut done = op.steps.clone();
        while let Some(step) = kind.next_step(&done) {
            let Some(tenant) = self.store.tenant(&op.tenant_slug).await? else {
                self.store.abandon_operation(&op.id, fence, "tenant row vanished").await?;
                return Ok(Progress::Failed("tenant row vanished".into()));
            };
            // A create (or undelete) is abandoned as soon as the tenant is no longer provisioning
            // (deleted meanwhile); an in-place restore as soon as the tenant is not restoring
            // under it any more.
            let gone = match kind {
                OperationKind::Create | OperationKind::Undelete if tenant.status != TenantStatus::Provisioning => {
                    Some(format!("tenant is {}, not provisioning", tenant.status))
                }
                OperationKind::RestorePointInTime if tenant.restoring.as_deref() != Some(op.id.as_str()) => {
                    Some(format!("tenant {} is not restoring under this operation", tenant.slug))
                }
                // Serving until its quiesce step: only another restore's mark, or a tenant out of
                // service (a delete superseded it), ends it.
                OperationKind::RestoreBackup
                    if tenant.restoring.as_deref().is_some_and(|r| r != op.id)
                        || !matches!(tenant.status, TenantStatus::Active | TenantStatus::Suspended) =>
                {
                    Some(format!("tenant {} is {}, not restoring under this operation", tenant.slug, tenant.status))
                }
                _ => None,
            };
            if let Some(why) = gone {
                self.store.abandon_operation(&op.id, fence, &why).await?;
                return Ok(Progress::Failed(why));
            }
            match self.step(&op, &tenant, step, fence).await {
                Ok(StepOutcome::Done) => {
                    done.push(step);
                    if !self.store.record_step(&op.id, fence, &done, kind.next_step(&done)).await? {
                        return lost();
                    }
                }
                Ok(StepOutcome::Later(wait)) => {
                    if !self.store.record_failure(&op.id, fence, &wait.to_string()).await? {
                        return lost();
                    }
                    return Ok(Progress::Pending(wait));
                }
                Err(e) if e.is_transient() => {
                    let reason = format!("{} step: {e}", step.as_str());
                    if !self.store.record_failure(&op.id, fence, &reason).await? {
                        return lost();
                    }
                    self.store.set_error(&op.tenant_slug, Some(&reason)).await?;
                    return Ok(Progress::Pending(Wait::Reason(reason)));
                }
                Err(e) => {
                    let reason = format!("{} step: {e}", step.as_str());
                    return self.fail(&op, fence, &reason).await;
                }
            }
        }
        let slug = op.tenant_slug.as_str();
        let (from, to) = match kind {
            OperationKind::Create | OperationKind::Undelete => (TenantStatus::Provisioning, TenantStatus::Active),
            OperationKind::Delete => (TenantStatus::Deleting, TenantStatus::Deleted),
            OperationKind::RestorePointInTime | OperationKind::RestoreBackup => {
                // Served again, and only then closed (one batch).
                if self.store.complete_restore(&op.id, fence, slug, kind).await? {
                    return Ok(Progress::Finished);
                }
                return Ok(Progress::Pending(Wait::Reason(format!(
                    "tenant {slug} changed while its restore finished"
                ))));
            }
        };
        if self.store.complete_operation(&op.id, fence, slug, from, to).await? {
            return Ok(Progress::Finished);
        }
        // Not completed: the tenant left `from` meanwhile (a delete of a create), or the lease was
        // lost. The next run re-reads and abandons or finishes it.
        Ok(Progress::Pending(Wait::Reason(format!("tenant {slug} changed while its {} finished", kind.as_str()))))
    }

    /// A permanent failure: a create marks the tenant `failed` (a re-send resumes, a delete
    /// tears down); a delete stays `deleting` with the error, for an operator to look at.
    async fn fail(&self, op: &OperationRow, fence: &Fence<'_>, reason: &str) -> Result<Progress> {
        log::error(&format!("operation {} ({}) on {} failed: {reason}", op.id, op.kind.as_str(), op.tenant_slug));
        match op.kind {
            OperationKind::RestorePointInTime | OperationKind::RestoreBackup => {
                if !self.store.fail_restore(&op.id, fence, &op.tenant_slug, reason).await? {
                    return Ok(Progress::Busy);
                }
                Ok(Progress::Failed(reason.to_owned()))
            }
            OperationKind::Create | OperationKind::Undelete => {
                if !self.store.fail_create(&op.id, fence, &op.tenant_slug, reason).await? {
                    return Ok(Progress::Busy);
                }
                Ok(Progress::Failed(reason.to_owned()))
            }
            OperationKind::Delete => {
                self.store.set_error(&op.tenant_slug, Some(reason)).await?;
                if !self.store.record_failure(&op.id, fence, reason).await? {
                    return Ok(Progress::Busy);
                }
                Ok(Progress::Pending(Wait::Reason(reason.to_owned())))
            }
        }
    }

    async fn step(&self, op: &OperationRow, tenant: &TenantRow, step: Step, fence: &Fence<'_>) -> Result<StepOutcome> {
        match step {
            Step::Database if op.kind.is_restore() => self.restore_database(op, tenant).await,
            Step::Database => self.find_or_create_database(tenant).await,
            Step::Quiesce => self.quiesce(op, tenant).await,
            Step::TimeTravel => self.time_travel(op, tenant).await,
            Step::Import => self.import(op, tenant).await,
            Step::CheckImport => self.check_import(op, tenant).await,
            Step::Switch => self.switch(op, tenant, fence).await,
            Step::Place => self.place_step(tenant).await,
            Step::Migrations => self.migrate(tenant).await,
            Step::Seed => self.seed(op, tenant).await,
            Step::Bind => {
                if !self.store.set_bind_wanted_if(&tenant.slug, true, TenantStatus::Provisioning).await? {
                    return Err(LifecycleError::Permanent("tenant left provisioning".into()));
                }
                self.bindings_step(home(tenant)).await
            }
            Step::Verify => self.verify(tenant).await,
            Step::Backup => self.backup(tenant).await,
            Step::Unbind => {
                if !self.store.set_bind_wanted_if(&tenant.slug, false, TenantStatus::Deleting).await? {
                    return Err(LifecycleError::Permanent("tenant left deleting".into()));
                }
                // Its host slot is given back (freed slots are reused), and the binding removed
                // from wherever it is: its host, and the main Worker if it was ever served there.
                // A run cut after the release finds no host on the row any more; the release
                // marked that host's set changed, so every host still marked is reconciled.
                let hosts = match self.store.release_host(&tenant.slug).await? {
                    Some(host) => vec![host],
                    None => self.store.dirty_hosts().await?,
                };
                for host in &hosts {
                    if let StepOutcome::Later(wait) = self.bindings_step(Home::Host(host)).await? {
                        return Ok(StepOutcome::Later(wait));
                    }
                }
                if self.settings.hosts.is_none() || !tenant.on_host || tenant.main_until.is_some() {
                    return self.bindings_step(Home::Main).await;
                }
                Ok(StepOutcome::Done)
            }
            Step::DropDatabase => {
                if let Some(id) = self.resolve_database(tenant).await? {
                    // Already gone (a lost answer to our own delete) counts as done.
                    self.api.delete_database(&id).await?;
                }
                Ok(StepOutcome::Done)
            }
        }
    }
}
