//! The Worker's side of the storage layer: what `Env` provides, read in one place.
//!
//! - [`config`]: the one configuration root, read from vars and secrets once per isolate.
//! - [`control`]: the control store over the `CONTROL_DB` binding.
//! - [`WorkerPlatform`]: the lifecycle's platform in the Worker: D1, `fetch` to the Cloudflare
//!   API, R2 for backups, `env.d1` for tenant bindings, `Date.now` and `setTimeout`.
//!
//! It may use the storage layer, the Cloudflare client, the `http` toolkit (for its errors) and
//! the core; nothing above.

use std::time::Duration;

use worker::{Bucket, D1Database, Env};

use crate::cloudflare::fetch::FetchTransport;
use crate::core::config::Config;
use crate::core::names::BindingName;
use crate::http::ApiError;
use crate::store::control::ControlStore;
use crate::store::ports::{BackupError, Backups, Bindings, Clock, Home, Platform};

pub mod host;

/// The binding of the control-plane database.
pub const CONTROL_BINDING: &str = "CONTROL_DB";
/// The R2 binding backups go to.
pub const BACKUPS_BINDING: &str = "BACKUPS";

thread_local! {
    /// The parsed configuration, read once per isolate (vars and secrets only change with a new
    /// Worker version, which starts new isolates).
    static CONFIG: std::cell::OnceCell<Config> = const { std::cell::OnceCell::new() };
}

/// The deployment's configuration; a bad `APEX` or `D1_NAME_PREFIX` is our fault, not the
/// client's (500, logged).
pub fn config(env: &Env) -> Result<Config, ApiError> {
    crate::core::cache::once_per_isolate(&CONFIG, || {
        let var = |name: &str| env.var(name).ok().map(|v| v.to_string());
        let secret = |name: &str| env.secret(name).ok().map(|v| v.to_string());
        Config::from_lookup(var, secret).map_err(ApiError::internal)
    })
}

/// The Cloudflare API client of this deployment, and its configuration; a missing piece is a
/// deployment error (503, logged).
pub fn api_client(
    env: &Env,
) -> Result<
    (crate::cloudflare::Client<crate::cloudflare::fetch::FetchTransport>, crate::core::config::CloudflareConfig),
    ApiError,
> {
    let config = config(env)?;
    let cloudflare = config.cloudflare.clone().map_err(|what| {
        ApiError::Unavailable {
            code: "lifecycle_not_configured",
            message: "tenant provisioning is not configured on this deployment".into(),
            retry_after: 60,
        }
        .inspect_log(&format!("lifecycle: {what}"))
    })?;
    let transport = crate::cloudflare::fetch::FetchTransport { timeout: std::time::Duration::from_secs(10) };
    let token = crate::cloudflare::ApiToken::new(cloudflare.api_token.expose());
    let client = crate::cloudflare::Client::new(
        transport,
        &cloudflare.api_base,
        &cloudflare.account_id,
        token,
        crate::core::retry::RetryPolicy::default(),
    );
    Ok((client, cloudflare))
}

/// The control store over the `CONTROL_DB` binding.
pub fn control(env: &Env) -> Result<ControlStore<D1Database>, ApiError> {
    Ok(ControlStore::new(env.d1(CONTROL_BINDING).map_err(ApiError::internal)?))
}

/// A tenant's database by its binding, if this Worker version has it.
/// Tenant binding `binding` where it lives: on this Worker, or on host `name` (then whether the
/// host holds it is known when a statement is sent).
pub fn tenant_binding(env: &Env, home: Home<'_>, binding: &BindingName) -> Option<D1Database> {
    match home {
        Home::Main => env.d1(binding.as_str()).ok(),
        Home::Host(name) => host::host_database_of(env, name, binding.as_str()),
    }
}

impl From<worker::Error> for ApiError {
    /// A tenant database through a binding host that lost its binding, or that could not be
    /// reached (`host/client.mjs`), is a passing unavailability: 503 (read from the error as the
    /// D1 layer reads it, `store::d1::error`). Anything else: 500.
    fn from(e: worker::Error) -> Self {
        let detail = e.to_string();
        let sql = crate::store::d1::error(e);
        if sql.unreachable || sql.not_bound {
            return Self::from(sql);
        }
        Self::internal(detail)
    }
}

impl From<crate::store::sql::SqlError> for ApiError {
    /// A tenant database that cannot be reached (or whose host lost its binding) is a passing
    /// unavailability, 503; any other trouble is ours: 500, logged with detail.
    fn from(e: crate::store::sql::SqlError) -> Self {
        if e.unreachable || e.not_bound {
            return ApiError::tenant_unavailable().inspect_log(&format!("database unavailable: {e}"));
        }
        Self::internal(e)
    }
}

/// The lifecycle's platform in the Worker.
pub struct WorkerPlatform;

impl Platform for WorkerPlatform {
    type Control = D1Database;
    type Transport = FetchTransport;
    type Backups = R2Backups;
    type Bindings = EnvBindings;
    type Clock = JsClock;
}

/// Tenant bindings as this invocation's `Env` has them.
pub struct EnvBindings(pub Env);

impl Bindings for EnvBindings {
    type Db = D1Database;
    fn database(&self, home: Home<'_>, binding: &BindingName) -> Option<D1Database> {
        tenant_binding(&self.0, home, binding)
    }
}

/// `Date.now()` and `setTimeout`.
pub struct JsClock;

impl Clock for JsClock {
    fn now_ms(&self) -> f64 {
        js_sys::Date::now()
    }
    async fn sleep(&self, duration: Duration) {
        worker::Delay::from(duration).await
    }
}

/// Backups in the `BACKUPS` R2 bucket; a missing binding fails each call (transient: a deploy
/// that adds the bucket fixes it).
pub struct R2Backups(pub Option<Bucket>);

impl R2Backups {
    pub fn from_env(env: &Env) -> Self {
        Self(env.bucket(BACKUPS_BINDING).ok())
    }

    fn bucket_or_err(&self) -> Result<&Bucket, BackupError> {
        self.0.as_ref().ok_or_else(|| BackupError(format!("no {BACKUPS_BINDING} bucket is bound")))
    }
}

fn r2(e: worker::Error) -> BackupError {
    BackupError(e.to_string())
}

impl Backups for R2Backups {
    fn bucket(&self) -> &str {
        BACKUPS_BINDING
    }

    async fn exists(&self, key: &str) -> Result<bool, BackupError> {
        Ok(self.bucket_or_err()?.head(key).await.map_err(r2)?.is_some())
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, metadata: &[(&str, &str)]) -> Result<(), BackupError> {
        let meta: std::collections::HashMap<String, String> =
            metadata.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        self.bucket_or_err()?.put(key, bytes).custom_metadata(meta).execute().await.map_err(r2).map(drop)
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackupError> {
        let Some(object) = self.bucket_or_err()?.get(key).execute().await.map_err(r2)? else {
            return Ok(None);
        };
        match object.body() {
            Some(body) => Ok(Some(body.bytes().await.map_err(r2)?)),
            None => Ok(None),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), BackupError> {
        self.bucket_or_err()?.delete(key).await.map_err(r2)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BackupError> {
        let bucket = self.bucket_or_err()?;
        let mut keys = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut request = bucket.list().prefix(prefix.to_owned());
            if let Some(c) = cursor.take() {
                request = request.cursor(c);
            }
            let page = request.execute().await.map_err(r2)?;
            keys.extend(page.objects().iter().map(|o| o.key()));
            match (page.truncated(), page.cursor()) {
                (true, Some(next)) => cursor = Some(next),
                _ => return Ok(keys),
            }
        }
    }
}
