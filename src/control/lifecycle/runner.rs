//! The saga runner: takes an operation's lease, runs its steps from the first one not done,
//! records each, and ends the operation (done, failed, or open for later).

use super::*;

impl Lifecycle<'_> {
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

    pub(super) async fn run_steps(&self, op: &OperationRow, fence: &Fence<'_>) -> Result<Progress, ApiError> {
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
    pub(super) async fn fail(
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

    pub(super) async fn step(
        &self,
        op: &OperationRow,
        tenant: &TenantRow,
        step: Step,
    ) -> Result<StepOutcome, StepError> {
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
}
