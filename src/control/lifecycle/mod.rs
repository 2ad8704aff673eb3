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
//!
//! Files: this one holds the configuration, the lease helper and the types; `runner` runs a
//! saga's steps, `steps` holds each step, `reconciler` the bindings reconciler and the scheduled
//! pass, `orphans` the orphan scan.

mod orphans;
mod reconciler;
mod runner;
mod steps;

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
pub(super) enum StepOutcome {
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
    pub(super) async fn holding<T>(
        &self,
        name: &str,
        work: impl std::future::Future<Output = T>,
    ) -> Result<Option<T>, ApiError> {
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
    pub(super) fn is_transient(&self) -> bool {
        match self {
            Self::Cloudflare(e) => e.is_transient(),
            // Control-plane D1 or R2 trouble: worth trying again later.
            Self::Api(_) => true,
            Self::Permanent(_) => false,
        }
    }

    pub(super) fn from_worker(e: worker::Error) -> Self {
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
