//! The tenant lifecycle: the create and delete sagas, the bindings reconciler and the orphan scan,
//! generic over the [`Platform`] they run on (the Worker's, or the in-memory one of native tests
//! and the fleet simulation).
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
//! operation is fenced by the lease (`Fence`), so it cannot overwrite its successor.
//!
//! Files: this one holds the configuration, the lease helper and the types; `error` the sagas'
//! error; `runner` runs a saga's steps, `steps` holds each step, `reconciler` the bindings
//! reconciler and the scheduled pass, `orphans` the orphan scan, `audit` the scheduled anchoring of
//! tenants' audit chains. The lifecycle may use the storage layer, the Cloudflare client and the
//! core; the admin API maps its errors to HTTP.

mod audit;
mod error;
mod hosts;
mod orphans;
mod reconciler;
mod restores;
mod runner;
mod steps;
mod worker;

use std::time::Duration;

use futures_util::future::{self, Either};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use audit::{AnchorPass, ANCHORS_PER_PASS};
pub use error::LifecycleError;
pub use restores::{BackupPass, RestoreInput, QUIESCE_MS};

use crate::cloudflare::{CfError, Client};
use crate::core::bindings::{self, BindingDiff, TenantBinding};
use crate::core::config::{BackupConfig, HostsConfig};
use crate::core::lifecycle::{OperationKind, Step, TenantStatus};
use crate::core::names::{BindingName, DatabaseName, DatabasePrefix};
use crate::core::slug::TenantSlug;
use crate::log;
use crate::store::control::{ControlStore, Fence, OperationRow, TenantRow};
use crate::store::ports::{Backups, Bindings, Clock, Home, Platform};
use crate::store::rest::RestDatabase;
use crate::store::sql::Sql;
use crate::store::tenant_db;

/// How long a lease outlives its holder's last renewal.
pub const LEASE_MS: f64 = 6_000.0;
/// How often a runner renews its lease while it works.
pub const HEARTBEAT_MS: u64 = 1_500;
/// How often the cron scans for orphan databases (the operator's `POST /v1/reconcile` always does).
pub const ORPHAN_SCAN_MS: f64 = 3_600_000.0;
/// Export polls within one invocation before leaving the rest to the next.
const EXPORT_POLLS: u32 = 20;

/// The input a create operation carries until the admin is seeded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateInput {
    pub admin_email: String,
    /// Removed once the admin user exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_password_hash: Option<String>,
}

/// Why an operation is waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// A create's verify step: its binding is not visible to the invocation that added it (the
    /// usual end of a create's first invocation; the next touch finishes it).
    BindingNotLive,
    /// Anything else, said in words (also recorded on the operation).
    Reason(String),
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BindingNotLive => f.write_str("binding not live in this Worker version yet"),
            Self::Reason(reason) => f.write_str(reason),
        }
    }
}

/// What a step did.
pub(super) enum StepOutcome {
    Done,
    /// Not finished; run again later.
    Later(Wait),
}

fn later(reason: impl Into<String>) -> StepOutcome {
    StepOutcome::Later(Wait::Reason(reason.into()))
}

/// How far an operation got in this invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Finished,
    /// Open, to be continued (by a re-send, a GET, or the reconciler).
    Pending(Wait),
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

impl BindingsReport {
    /// A set known to be applied already: nothing was read or sent.
    fn unchanged(wanted: usize) -> Self {
        Self { converged: true, patches: 0, wanted, missing: Vec::new(), extra: Vec::new(), wrong_database: Vec::new() }
    }
}

/// What the lifecycle is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The Worker script whose bindings tenants get.
    pub script: String,
    pub prefix: DatabasePrefix,
    /// Who holds the leases this lifecycle takes (unique per invocation).
    pub holder: String,
    pub remove_orphans: bool,
    pub migration_concurrency: usize,
    /// Binding hosts (`None`: tenant bindings live on `script` itself).
    pub hosts: Option<HostsConfig>,
    pub backups: BackupConfig,
}

/// Everything the lifecycle needs, built once per invocation.
pub struct Lifecycle<P: Platform> {
    pub store: ControlStore<P::Control>,
    pub api: Client<P::Transport>,
    pub backups: P::Backups,
    pub bindings: P::Bindings,
    pub clock: P::Clock,
    pub settings: Settings,
}

type Result<T, E = LifecycleError> = std::result::Result<T, E>;

impl<P: Platform> Lifecycle<P> {
    /// Runs `work` while holding lease `name`, renewing it every [`HEARTBEAT_MS`]. `None` when
    /// the lease is held by someone else, or when it was lost midway (then `work` is dropped
    /// where it stood: every step is idempotent, and the successor runs it again).
    pub(super) async fn holding<T>(&self, name: &str, work: impl std::future::Future<Output = T>) -> Result<Option<T>> {
        let holder = self.settings.holder.as_str();
        if !self.store.acquire_lease(name, holder, self.clock.now_ms(), LEASE_MS).await? {
            return Ok(None);
        }
        let heartbeat = async {
            loop {
                self.clock.sleep(Duration::from_millis(HEARTBEAT_MS)).await;
                match self.store.renew_lease(name, holder, self.clock.now_ms(), LEASE_MS).await {
                    Ok(true) => {}
                    Ok(false) => {
                        log::warn(&format!("lease {name}: lost by {holder} (it stalled past {LEASE_MS} ms)"));
                        return;
                    }
                    // A failed renewal is retried at the next beat; the lease lasts several beats.
                    Err(e) => log::warn(&format!("lease {name}: renewal failed: {e}")),
                }
            }
        };
        let outcome = match future::select(std::pin::pin!(work), std::pin::pin!(heartbeat)).await {
            Either::Left((out, _)) => Some(out),
            Either::Right(((), _)) => None,
        };
        self.store.release_lease(name, holder).await?;
        Ok(outcome)
    }

    /// Runs `work()` under lease `name`, trying for about 3 s while another invocation holds it.
    /// `None` when it stayed busy (the holder derives its set after taking the lease, so it
    /// includes our change).
    pub(super) async fn holding_patiently<T, F>(&self, name: &str, work: impl Fn() -> F) -> Result<Option<T>>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        for attempt in 0..20 {
            if attempt > 0 {
                self.clock.sleep(Duration::from_millis(150)).await;
            }
            if let Some(result) = self.holding(name, work()).await? {
                return result.map(Some);
            }
        }
        Ok(None)
    }

    /// Tenant binding of `slug` where `home` says it lives, as this invocation sees it.
    fn tenant_database(&self, home: Home<'_>, slug: &TenantSlug) -> Option<<P::Bindings as Bindings>::Db> {
        self.bindings.database(home, &BindingName::for_tenant(slug))
    }

    /// The wall clock, in ms.
    pub fn now_ms(&self) -> f64 {
        self.clock.now_ms()
    }

    /// A new unique id (for operations the reconciler opens).
    fn new_id(&self, what: &str) -> String {
        format!("{}-{what}-{}", self.settings.holder, self.clock.now_ms() as u64)
    }
}

/// The bindings wanted rows ask for (a row whose slug does not parse is skipped).
fn tenant_bindings(rows: Vec<crate::store::control::WantedBinding>) -> Vec<TenantBinding> {
    rows.into_iter()
        .filter_map(|t| {
            let slug = TenantSlug::parse(&t.slug).ok()?;
            Some(TenantBinding { binding: BindingName::for_tenant(&slug), database_id: t.database_id })
        })
        .collect()
}

/// Where a tenant's binding is served from: its host once it is on it, else the main Worker.
fn home(tenant: &TenantRow) -> Home<'_> {
    Home::of(tenant.host.as_deref().filter(|_| tenant.on_host))
}

fn database_id(tenant: &TenantRow) -> Result<&str> {
    tenant.database_id.as_deref().ok_or_else(|| LifecycleError::Permanent("tenant has no database id yet".into()))
}
