//! The lifecycle on the Worker's platform, built from `Env` and the configuration root.

use std::time::Duration;

use worker::Env;

use super::{Lifecycle, Settings};
use crate::cloudflare::fetch::FetchTransport;
use crate::cloudflare::{ApiToken, Client};
use crate::core::retry::RetryPolicy;
use crate::edge::{self, EnvBindings, JsClock, R2Backups, WorkerPlatform};
use crate::http::ApiError;

impl Lifecycle<WorkerPlatform> {
    /// The lifecycle for this invocation; a missing piece of configuration is a deployment error
    /// (503, logged).
    pub fn from_env(env: &Env) -> Result<Self, ApiError> {
        let config = edge::config(env)?;
        let cloudflare = config.cloudflare.as_ref().map_err(|what| {
            ApiError::Unavailable {
                code: "lifecycle_not_configured",
                message: "tenant provisioning is not configured on this deployment".into(),
                retry_after: 60,
            }
            .inspect_log(&format!("lifecycle: {what}"))
        })?;
        let transport = FetchTransport { timeout: Duration::from_secs(10) };
        let token = ApiToken::new(cloudflare.api_token.expose());
        Ok(Self {
            store: edge::control(env)?,
            api: Client::new(transport, &cloudflare.api_base, &cloudflare.account_id, token, RetryPolicy::default()),
            backups: R2Backups::from_env(env),
            bindings: EnvBindings(env.clone()),
            clock: JsClock,
            settings: Settings {
                script: cloudflare.script.clone(),
                prefix: config.db_prefix.clone(),
                holder: crate::crypto::random_id()?,
                remove_orphans: config.remove_orphans,
                migration_concurrency: config.migration_concurrency,
                hosts: config.hosts.clone(),
            },
        })
    }
}
