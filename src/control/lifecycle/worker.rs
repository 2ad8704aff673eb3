//! The lifecycle on the Worker's platform, built from `Env` and the configuration root.

use worker::Env;

use super::{Lifecycle, Settings};
use crate::edge::{self, EnvBindings, JsClock, R2Backups, WorkerPlatform};
use crate::http::ApiError;

impl Lifecycle<WorkerPlatform> {
    /// The lifecycle for this invocation; a missing piece of configuration is a deployment error
    /// (503, logged).
    pub fn from_env(env: &Env) -> Result<Self, ApiError> {
        let config = edge::config(env)?;
        let (api, cloudflare) = edge::api_client(env)?;
        Ok(Self {
            store: edge::control(env)?,
            api,
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
                backups: config.backups.clone(),
            },
        })
    }
}
