//! Binding hosts: placing tenants on them, creating and upgrading their scripts, reconciling each
//! one's binding set, and moving tenants of the single-script layout onto them.
//!
//! A host's binding set is derived, like the main Worker's (see `core::bindings`): the tenants the
//! control plane places on it with `bind_wanted`. Each host is reconciled under its own lease
//! (`bindings:{host}`), and only ever PATCHed with its own set, so a change on one host never
//! touches another. A host whose wanted set changed (every change bumps its `wanted_gen` in the
//! same batch) is "dirty" until a reconcile converges on that generation.

use super::*;
use crate::store::control::{HostRow, PlaceFor};
use crate::store::host;

/// How long the main Worker keeps a moved tenant's old binding: well past the tenant lookup's
/// cache lifetime, so an isolate still routing by the old row keeps answering.
pub const MOVE_GRACE_MS: f64 = 60_000.0;

impl<P: Platform> Lifecycle<P> {
    fn hosts_config(&self) -> Result<&HostsConfig> {
        self.settings.hosts.as_ref().ok_or_else(|| LifecycleError::Permanent("binding hosts are not configured".into()))
    }

    /// The create saga's `place` step: a slot on a host, whose script exists.
    pub(super) async fn place_step(&self, tenant: &TenantRow) -> Result<StepOutcome> {
        let Some(hosts) = &self.settings.hosts else { return Ok(StepOutcome::Done) };
        let placed = self.store.place(&tenant.slug, &self.settings.script, hosts.capacity, PlaceFor::Create).await?;
        if placed.is_none() {
            return Err(LifecycleError::Permanent("tenant left provisioning before it was placed".into()));
        }
        // The host's script is uploaded by its first reconcile, under its lease (one upload, not
        // one per tenant placed on it meanwhile).
        Ok(StepOutcome::Done)
    }

    /// Uploads host `name`'s script (its control row is `row`) if it is not there yet, or runs
    /// older host code. An upload is a PUT, so one repeated after a lost answer is harmless; a
    /// re-upload keeps the host's D1 bindings (`keep_bindings`).
    async fn ensure_host(&self, name: &str, row: Option<&HostRow>) -> Result<()> {
        let hosts = self.hosts_config()?;
        if row.is_some_and(|h| h.state == "ready" && h.code.as_deref() == Some(host::CODE)) {
            return Ok(());
        }
        let mut metadata = host::metadata(&[]);
        metadata["keep_bindings"] = json!(["d1"]);
        self.api.upload_namespace_script(&hosts.namespace, name, metadata, host::MODULE, host::SOURCE).await?;
        self.store.set_host_ready(name, host::CODE).await?;
        let detail = json!({ "host": name, "code": host::CODE });
        self.store.audit("lifecycle", "host.uploaded", None, &self.settings.holder, &detail).await?;
        Ok(())
    }

    /// Makes host `name`'s bindings exactly its wanted set. `None` when another invocation holds
    /// its lease (it derives the set after taking the lease, so it includes our change).
    pub async fn reconcile_host(&self, name: &str) -> Result<Option<BindingsReport>> {
        self.reconcile_host_with(name, false).await
    }

    /// [`Self::reconcile_host`], reading the host's bindings before changing them (the drift
    /// check of the scheduled pass and of a heal: nothing is PATCHed when nothing drifted).
    pub async fn check_host(&self, name: &str) -> Result<Option<BindingsReport>> {
        self.reconcile_host_with(name, true).await
    }

    async fn reconcile_host_with(&self, name: &str, check: bool) -> Result<Option<BindingsReport>> {
        self.holding_patiently(&format!("bindings:{name}"), || self.reconcile_host_locked(name, check)).await
    }

    /// Under the host's lease. A host's bindings are all tenants' (it has none of its own), so
    /// its wanted set is sent as is, without reading the current one first, unless `check` (the
    /// scheduled drift check) asks to look before changing anything; the PATCH's answer is the
    /// new set, checked in turn. One API call per reconcile in the common case.
    async fn reconcile_host_locked(&self, name: &str, check: bool) -> Result<BindingsReport> {
        let namespace = self.hosts_config()?.namespace.clone();
        let row = self.store.host(name).await?;
        self.ensure_host(name, row.as_ref()).await?;
        if !check {
            // Another runner's reconcile (we waited for its lease) may have applied our change:
            // its generation then covers ours, and nothing is left to send. (`applied_gen` only
            // grows, so the row read above can only make this skip less often, never wrongly.)
            let wanted = self.store.host_wanted(name).await?;
            if row.as_ref().is_some_and(|h| h.applied_gen >= wanted.generation) {
                return Ok(BindingsReport::unchanged(wanted.bindings.len()));
            }
        }
        let mut patches = 0;
        let mut known: Option<Vec<Value>> = None;
        loop {
            let wanted = self.store.host_wanted(name).await?;
            let bindings = tenant_bindings(wanted.bindings);
            let current = match known.take() {
                Some(current) => current,
                None if check || patches > 0 => self.api.get_script_settings(Some(&namespace), name).await?.bindings,
                // Unknown: sent without looking (the diff against nothing says "all missing").
                None => Vec::new(),
            };
            let BindingDiff { missing, extra, wrong_database } = bindings::diff(&current, &bindings);
            let converged = missing.is_empty() && extra.is_empty() && wrong_database.is_empty();
            if converged {
                self.store.set_host_applied(name, wanted.generation).await?;
            }
            if converged || patches == 3 {
                return Ok(BindingsReport {
                    converged,
                    patches,
                    wanted: bindings.len(),
                    missing,
                    extra,
                    wrong_database,
                });
            }
            let desired = bindings::desired(&[], &bindings);
            known = Some(self.api.patch_script_settings(Some(&namespace), name, &desired).await?.bindings);
            patches += 1;
        }
    }

    /// Reconciles every host whose wanted set changed. Returns each one's report (`None`: busy).
    pub async fn reconcile_dirty_hosts(&self) -> Result<Vec<(String, Option<BindingsReport>)>> {
        if self.settings.hosts.is_none() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for name in self.store.dirty_hosts().await? {
            let report = self.reconcile_host(&name).await?;
            out.push((name, report));
        }
        Ok(out)
    }

    /// Reconciles the main Worker's own tenant bindings when it may hold any: always without
    /// hosts; with hosts only while tenants are still served through it (or were moved less than
    /// a grace period ago), or until a reconcile has seen it hold none. Once the last tenant has
    /// moved, the main Worker is never PATCHed again.
    pub async fn reconcile_main(&self) -> Result<Option<BindingsReport>> {
        if self.settings.hosts.is_some() {
            let wanted = self.store.wanted_bindings(self.clock.now_ms()).await?;
            let clean = self.store.platform_value("main_bindings").await?.as_deref() == Some("0");
            if wanted.is_empty() && clean {
                return Ok(Some(BindingsReport::unchanged(0)));
            }
        }
        let report = self.reconcile_bindings().await?;
        if let Some(r) = &report {
            if r.converged && self.settings.hosts.is_some() {
                self.store.set_platform_value("main_bindings", Some(&r.wanted.to_string())).await?;
            }
        }
        Ok(report)
    }

    /// The upgrade from the single-script layout: moves up to `limit` tenants still served through
    /// the main Worker's own bindings onto hosts, without a moment unserved. Each is placed on a
    /// host (still served through the main Worker), bound there, checked through the host (stamp
    /// and schema), and only then served through it; the main Worker keeps the old binding for
    /// [`MOVE_GRACE_MS`] more, then the main reconcile drops it. Returns the slugs moved.
    pub async fn move_from_main(&self, limit: u32) -> Result<Vec<String>> {
        let Some(hosts) = &self.settings.hosts else { return Ok(Vec::new()) };
        let tenants = self.store.tenants_on_main(limit).await?;
        let mut placed = Vec::new();
        for tenant in tenants {
            if let Some(host) =
                self.store.place(&tenant.slug, &self.settings.script, hosts.capacity, PlaceFor::Move).await?
            {
                placed.push((tenant, host));
            }
        }
        let mut touched: Vec<&str> = placed.iter().map(|(_, h)| h.as_str()).collect();
        touched.sort_unstable();
        touched.dedup();
        for name in touched {
            self.reconcile_host(name).await?;
        }
        let mut moved = Vec::new();
        for (tenant, host) in &placed {
            let Ok(slug) = TenantSlug::parse(&tenant.slug) else { continue };
            let Some(db) = self.tenant_database(Home::Host(host), &slug) else { continue };
            // Served through the host only once it answers there as this tenant, at this schema.
            if tenant_db::TenantDb::open(db, slug, &self.store).await.is_err() {
                continue;
            }
            let until = self.clock.now_ms() + MOVE_GRACE_MS;
            if self.store.move_to_host(&tenant.slug, host, until).await? {
                let detail = json!({ "host": host });
                self.store
                    .audit("reconciler", "tenant.moved_to_host", Some(&tenant.slug), &self.settings.holder, &detail)
                    .await?;
                moved.push(tenant.slug.clone());
            }
        }
        Ok(moved)
    }
}
