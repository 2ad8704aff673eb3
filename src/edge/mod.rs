//! The Worker's side of the storage layer: what `Env` provides, read in one place.
//!
//! - [`config`]: the one configuration root, read from vars and secrets once per isolate.
//! - [`control`]: the control store over the `CONTROL_DB` binding.
//! - [`WorkerPlatform`]: the lifecycle's platform in the Worker: D1, `fetch` to the Cloudflare
//!   API, R2 for backups, `env.d1` for tenant bindings, `Date.now` and `setTimeout`.
//!
//! It may use the storage layer, the Cloudflare client, the `http` toolkit (for its errors) and
//! the core; nothing above.

use std::rc::Rc;
use std::time::Duration;

use wasm_bindgen::JsCast;

use worker::{Bucket, D1Database, Env};

use crate::cloudflare::fetch::FetchTransport;
use crate::core::config::Config;
use crate::core::names::BindingName;
use crate::http::ApiError;
use crate::store::control::ControlStore;
use crate::store::ports::{BackupError, Backups, Bindings, Clock, Home, Platform, Stored};

pub mod host;
pub mod meter;

/// The binding of the control-plane database.
pub const CONTROL_BINDING: &str = "CONTROL_DB";
/// The R2 binding backups go to.
pub const BACKUPS_BINDING: &str = "BACKUPS";

thread_local! {
    /// The parsed configuration, read once per isolate (vars and secrets only change with a new
    /// Worker version, which starts new isolates).
    static CONFIG: std::cell::OnceCell<Rc<Config>> = const { std::cell::OnceCell::new() };
}

/// The deployment's configuration (shared, not copied: every request reads it); a bad `APEX` or
/// `D1_NAME_PREFIX` is our fault, not the client's (500, logged).
pub fn config(env: &Env) -> Result<Rc<Config>, ApiError> {
    crate::core::cache::once_per_isolate(&CONFIG, || {
        let var = |name: &str| env.var(name).ok().map(|v| v.to_string());
        let secret = |name: &str| env.secret(name).ok().map(|v| v.to_string());
        Config::from_lookup(var, secret).map(Rc::new).map_err(ApiError::internal)
    })
}

/// Binding `name` of `env` as `T`, without workers-rs's check of its constructor's name (a
/// string read from JavaScript on every call): for the bindings every request opens, whose type
/// wrangler.toml (or `npm run deploy`) fixes. `None` when this Worker version has no such binding.
fn binding_of<T: JsCast>(env: &Env, name: &str) -> Option<T> {
    let value = js_sys::Reflect::get(env, &wasm_bindgen::JsValue::from_str(name)).ok()?;
    (value.is_object()).then(|| value.unchecked_into())
}

/// A hot tenant's database on this Worker (`HOT_<database id>`, see `BindingName::hot`), if
/// `npm run deploy` bound it on this version.
pub fn hot_binding(env: &Env, name: &BindingName) -> Option<D1Database> {
    binding_of::<worker::worker_sys::D1Database>(env, name.as_str()).map(D1Database::from)
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
    let db = binding_of::<worker::worker_sys::D1Database>(env, CONTROL_BINDING)
        .ok_or_else(|| ApiError::internal(format!("this Worker has no {CONTROL_BINDING} binding")))?;
    Ok(ControlStore::new(D1Database::from(db)))
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

#[wasm_bindgen::prelude::wasm_bindgen(module = "/src/edge/backups.mjs")]
extern "C" {
    #[wasm_bindgen(js_name = storeExport, catch)]
    async fn store_export_js(
        bucket: &wasm_bindgen::JsValue,
        url: &str,
        key: &str,
        metadata: &wasm_bindgen::JsValue,
    ) -> Result<wasm_bindgen::JsValue, wasm_bindgen::JsValue>;
    #[wasm_bindgen(js_name = uploadObject, catch)]
    async fn upload_object_js(
        bucket: &wasm_bindgen::JsValue,
        key: &str,
        url: &str,
    ) -> Result<wasm_bindgen::JsValue, wasm_bindgen::JsValue>;
    #[wasm_bindgen(js_name = objectResponse, catch)]
    async fn object_response_js(
        bucket: &wasm_bindgen::JsValue,
        key: &str,
    ) -> Result<wasm_bindgen::JsValue, wasm_bindgen::JsValue>;
}

fn js_message(e: wasm_bindgen::JsValue) -> String {
    js_sys::Reflect::get(&e, &"message".into()).ok().and_then(|m| m.as_string()).unwrap_or_else(|| format!("{e:?}"))
}

/// What `storeExport` answers.
#[derive(serde::Deserialize)]
struct StoredJs {
    bytes: usize,
    sha256: String,
    md5: String,
    rows: std::collections::BTreeMap<String, u64>,
}

impl R2Backups {
    fn raw(&self) -> Result<wasm_bindgen::JsValue, BackupError> {
        use wasm_bindgen::JsCast;
        let bucket = self.bucket_or_err()?;
        Ok(bucket.as_ref().unchecked_ref::<wasm_bindgen::JsValue>().clone())
    }

    /// Object `key` as a streamed response (`None` when it is missing): never held whole.
    pub async fn object_response(&self, key: &str) -> Result<Option<worker::Response>, BackupError> {
        let answer = object_response_js(&self.raw()?, key).await.map_err(|e| BackupError(js_message(e)))?;
        if answer.is_null() || answer.is_undefined() {
            return Ok(None);
        }
        use wasm_bindgen::JsCast;
        Ok(Some(worker::Response::from(answer.unchecked_into::<web_sys::Response>())))
    }
}

impl Backups for R2Backups {
    fn bucket(&self) -> &str {
        BACKUPS_BINDING
    }

    async fn exists(&self, key: &str) -> Result<bool, BackupError> {
        Ok(self.bucket_or_err()?.head(key).await.map_err(r2)?.is_some())
    }

    async fn store_export(&self, url: &str, key: &str, metadata: &[(&str, &str)]) -> Result<Stored, BackupError> {
        let meta = js_sys::Object::new();
        for (k, v) in metadata {
            let _ = js_sys::Reflect::set(&meta, &(*k).into(), &(*v).into());
        }
        let answer = store_export_js(&self.raw()?, url, key, &meta).await.map_err(|e| BackupError(js_message(e)))?;
        let s: StoredJs = serde_wasm_bindgen::from_value(answer).map_err(|e| BackupError(e.to_string()))?;
        Ok(Stored { bytes: s.bytes, sha256: s.sha256, md5: s.md5, rows: s.rows })
    }

    async fn upload_to(&self, key: &str, url: &str) -> Result<bool, BackupError> {
        match upload_object_js(&self.raw()?, key, url).await {
            Ok(_) => Ok(true),
            Err(e) => {
                let message = js_message(e);
                if message.starts_with("missing:") {
                    Ok(false)
                } else {
                    Err(BackupError(message))
                }
            }
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
