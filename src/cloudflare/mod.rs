//! A client for the part of the Cloudflare REST API tenantry calls: D1 databases and Worker
//! script settings.
//!
//! Each call is an [`Endpoint`] value (method, path, body); one [`Client`] executes them all: it
//! owns authentication, the response envelope, retries (see [`crate::core::retry`]) and error
//! mapping into [`CfError`]. The network sits behind the [`Transport`] trait: `worker::Fetch` in
//! the Worker (`fetch.rs`), a scripted fake in the unit tests. Nothing here knows about Workers.
//!
//! The API token is a [`ApiToken`], whose `Debug` and `Display` never show it; no error message
//! built here contains it.

pub mod fetch;

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::core::retry::{parse_retry_after, Failure, RetryPolicy};

/// The API token. Shown as `***` by `Debug` and `Display`.
#[derive(Clone)]
pub struct ApiToken(String);

impl ApiToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }
    fn header(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(***)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

/// A request body.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    None,
    Json(Value),
    /// `multipart/form-data` with one part named `settings` holding this JSON (script settings).
    Settings(Value),
    /// `multipart/form-data` of a Worker upload: a part `metadata` (JSON) and one ES module.
    Script {
        metadata: Value,
        module_name: String,
        module: String,
    },
    /// Raw bytes (an upload to a presigned URL: a D1 import's file).
    Bytes(Vec<u8>),
}

/// One call of the API: where, how, and what it answers with (`R`).
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// A stable name for logs and errors (`d1.create`, ...).
    pub name: &'static str,
    pub method: Method,
    /// The path below `/accounts/{account_id}`, query string included.
    pub path: String,
    pub body: Body,
}

/// What the transport is asked to send.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    pub method: Method,
    pub url: String,
    /// `Some` for API calls; `None` for presigned download URLs, which must never get the token.
    pub authorization: Option<String>,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpResponse {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
}

/// The network failed to give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("timed out")]
    Timeout,
    #[error("network error: {0}")]
    Network(String),
}

/// The network, a clock and a source of randomness: what the client needs from its host.
#[allow(async_fn_in_trait)] // used with static dispatch only; wasm futures are not Send anyway
pub trait Transport {
    async fn send(&self, request: &HttpRequest) -> Result<HttpResponse, TransportError>;
    async fn sleep(&self, duration: Duration);
    /// A uniform draw in `[0, 1)`, for retry jitter.
    fn random(&self) -> f64;
}

/// A failed call, after retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CfError {
    #[error("{endpoint}: not found ({code}: {message})")]
    NotFound { endpoint: &'static str, code: u32, message: String },
    #[error("{endpoint}: already exists")]
    AlreadyExists { endpoint: &'static str },
    #[error("{endpoint}: the account's D1 database limit is reached")]
    DatabaseLimit { endpoint: &'static str },
    #[error("{endpoint}: rate limited by the Cloudflare API")]
    RateLimited { endpoint: &'static str, retry_after: Option<Duration> },
    #[error("{endpoint}: Cloudflare API error {status} ({code}: {message})")]
    Server { endpoint: &'static str, status: u16, code: u32, message: String },
    #[error("{endpoint}: {error}")]
    Transport { endpoint: &'static str, error: TransportError },
    #[error("{endpoint}: the API token was refused ({status}, {code})")]
    Unauthorized { endpoint: &'static str, status: u16, code: u32 },
    #[error("{endpoint}: request refused ({status}, {code}: {message})")]
    Api { endpoint: &'static str, status: u16, code: u32, message: String },
    #[error("{endpoint}: unreadable answer: {detail}")]
    Decode { endpoint: &'static str, detail: String },
}

/// 10214 / 10215: a settings or secret change refused because the Worker's latest version is not
/// the deployed one (a `wrangler deploy` between its version upload and its deployment, a
/// `wrangler versions upload` not yet deployed, a rollback). It passes when that version is
/// deployed, so it is worth trying again later, not immediately.
pub const LATEST_VERSION_NOT_DEPLOYED: [u32; 2] = [10214, 10215];

impl CfError {
    /// Whether trying the same thing again later may succeed (the operation log retries these).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::RateLimited { .. } | Self::Server { .. } | Self::Transport { .. } | Self::Decode { .. } => true,
            Self::Api { code, .. } => LATEST_VERSION_NOT_DEPLOYED.contains(code),
            Self::NotFound { .. }
            | Self::AlreadyExists { .. }
            | Self::DatabaseLimit { .. }
            | Self::Unauthorized { .. } => false,
        }
    }
}

/// The envelope every API answer comes in.
#[derive(Debug, Deserialize)]
pub struct Envelope<R> {
    pub success: bool,
    #[serde(default)]
    pub errors: Vec<ApiMessage>,
    pub result: Option<R>,
    pub result_info: Option<ResultInfo>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct ApiMessage {
    pub code: u32,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct ResultInfo {
    pub page: u32,
    pub per_page: u32,
    pub count: u32,
    pub total_count: u32,
}

/// A D1 database as the API describes it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Database {
    pub uuid: String,
    pub name: String,
    #[serde(default)]
    pub created_at: Option<String>,
}

/// One statement's result from `/query`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct QueryResult {
    #[serde(default)]
    pub results: Vec<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub success: bool,
    #[serde(default)]
    pub meta: Option<QueryMeta>,
}

/// What a statement did (`meta` of a `/query` result).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub struct QueryMeta {
    #[serde(default)]
    pub changes: u64,
}

/// A step of the export polling protocol.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ExportPoll {
    pub status: String,
    pub at_bookmark: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    pub result: Option<ExportResult>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ExportResult {
    pub filename: String,
    pub signed_url: String,
}

/// An answer of the import protocol (`init`, `ingest`, `poll`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct ImportStep {
    #[serde(default)]
    pub success: Option<bool>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub at_bookmark: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub filename: Option<String>,
    #[serde(default)]
    pub upload_url: Option<String>,
    #[serde(default)]
    pub result: Option<ImportResult>,
}

/// A finished import.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct ImportResult {
    #[serde(default)]
    pub num_queries: u64,
    #[serde(default)]
    pub final_bookmark: Option<String>,
}

/// A Time Travel bookmark (`GET .../time_travel/bookmark`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Bookmark {
    pub bookmark: String,
}

/// What a Time Travel restore did.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct TimeTravelRestore {
    pub bookmark: String,
    #[serde(default)]
    pub previous_bookmark: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// A Worker's settings; bindings are kept as JSON so unknown binding types pass through intact.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ScriptSettings {
    #[serde(default)]
    pub bindings: Vec<Value>,
}

/// The endpoints, as data.
pub mod endpoints {
    use super::*;

    fn enc(s: &str) -> String {
        url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
    }

    pub fn create_database(name: &str) -> Endpoint {
        Endpoint {
            name: "d1.create",
            method: Method::Post,
            path: "/d1/database".into(),
            body: Body::Json(json!({ "name": name })),
        }
    }
    pub fn list_databases(name: &str, page: u32, per_page: u32) -> Endpoint {
        Endpoint {
            name: "d1.list",
            method: Method::Get,
            path: format!("/d1/database?name={}&page={page}&per_page={per_page}", enc(name)),
            body: Body::None,
        }
    }
    pub fn get_database(id: &str) -> Endpoint {
        Endpoint { name: "d1.get", method: Method::Get, path: format!("/d1/database/{}", enc(id)), body: Body::None }
    }
    pub fn delete_database(id: &str) -> Endpoint {
        Endpoint {
            name: "d1.delete",
            method: Method::Delete,
            path: format!("/d1/database/{}", enc(id)),
            body: Body::None,
        }
    }
    pub fn query(id: &str, sql: &str, params: &[Value]) -> Endpoint {
        Endpoint {
            name: "d1.query",
            method: Method::Post,
            path: format!("/d1/database/{}/query", enc(id)),
            body: Body::Json(if params.is_empty() {
                json!({ "sql": sql })
            } else {
                json!({ "sql": sql, "params": params })
            }),
        }
    }
    /// Several statements with their parameters, run by D1 as one batch.
    pub fn query_batch(id: &str, statements: &[(String, Vec<Value>)]) -> Endpoint {
        let batch: Vec<Value> =
            statements.iter().map(|(sql, params)| json!({ "sql": sql, "params": params })).collect();
        Endpoint {
            name: "d1.query",
            method: Method::Post,
            path: format!("/d1/database/{}/query", enc(id)),
            body: Body::Json(json!({ "batch": batch })),
        }
    }
    pub fn export(id: &str, bookmark: Option<&str>) -> Endpoint {
        let mut body = json!({ "output_format": "polling" });
        if let Some(b) = bookmark {
            body["current_bookmark"] = json!(b);
        }
        Endpoint {
            name: "d1.export",
            method: Method::Post,
            path: format!("/d1/database/{}/export", enc(id)),
            body: Body::Json(body),
        }
    }
    /// A step of the import protocol: `{action: "init", etag}`, `{action: "ingest", filename,
    /// etag}` or `{action: "poll", current_bookmark}`.
    pub fn import(id: &str, body: Value) -> Endpoint {
        Endpoint {
            name: "d1.import",
            method: Method::Post,
            path: format!("/d1/database/{}/import", enc(id)),
            body: Body::Json(body),
        }
    }
    /// The Time Travel bookmark of database `id` at `timestamp` (RFC 3339).
    pub fn bookmark(id: &str, timestamp: &str) -> Endpoint {
        Endpoint {
            name: "d1.time_travel.bookmark",
            method: Method::Get,
            path: format!("/d1/database/{}/time_travel/bookmark?timestamp={}", enc(id), enc(timestamp)),
            body: Body::None,
        }
    }
    /// Restores database `id` in place to `bookmark`.
    pub fn restore(id: &str, bookmark: &str) -> Endpoint {
        Endpoint {
            name: "d1.time_travel.restore",
            method: Method::Post,
            path: format!("/d1/database/{}/time_travel/restore?bookmark={}", enc(id), enc(bookmark)),
            body: Body::None,
        }
    }
    pub fn get_settings(script: &str) -> Endpoint {
        get_script_settings(None, script)
    }
    /// Where a script lives: the account's own Workers, or a dispatch namespace.
    fn script_path(namespace: Option<&str>, script: &str) -> String {
        match namespace {
            None => format!("/workers/scripts/{}", enc(script)),
            Some(ns) => format!("/workers/dispatch/namespaces/{}/scripts/{}", enc(ns), enc(script)),
        }
    }
    pub fn get_script_settings(namespace: Option<&str>, script: &str) -> Endpoint {
        Endpoint {
            name: if namespace.is_some() { "dispatch.scripts.settings.get" } else { "scripts.settings.get" },
            method: Method::Get,
            path: format!("{}/settings", script_path(namespace, script)),
            body: Body::None,
        }
    }
    pub fn patch_script_settings(namespace: Option<&str>, script: &str, bindings: &[Value]) -> Endpoint {
        Endpoint {
            name: if namespace.is_some() { "dispatch.scripts.settings.patch" } else { "scripts.settings.patch" },
            method: Method::Patch,
            path: format!("{}/settings", script_path(namespace, script)),
            body: Body::Settings(json!({ "bindings": bindings })),
        }
    }
    /// Uploads (creates or replaces) a one-module script in a dispatch namespace.
    pub fn upload_namespace_script(
        namespace: &str,
        script: &str,
        metadata: Value,
        module_name: &str,
        module: &str,
    ) -> Endpoint {
        Endpoint {
            name: "dispatch.scripts.upload",
            method: Method::Put,
            path: script_path(Some(namespace), script),
            body: Body::Script { metadata, module_name: module_name.to_owned(), module: module.to_owned() },
        }
    }
    pub fn list_namespace_scripts(namespace: &str) -> Endpoint {
        Endpoint {
            name: "dispatch.scripts.list",
            method: Method::Get,
            path: format!("/workers/dispatch/namespaces/{}/scripts", enc(namespace)),
            body: Body::None,
        }
    }
    pub fn delete_namespace_script(namespace: &str, script: &str) -> Endpoint {
        Endpoint {
            name: "dispatch.scripts.delete",
            method: Method::Delete,
            path: format!("{}?force=true", script_path(Some(namespace), script)),
            body: Body::None,
        }
    }
    pub fn patch_settings(script: &str, bindings: &[Value]) -> Endpoint {
        patch_script_settings(None, script, bindings)
    }
}

/// Executes endpoints against one account.
pub struct Client<T> {
    transport: T,
    base_url: String,
    account_id: String,
    token: ApiToken,
    policy: RetryPolicy,
}

/// Database list pages are this long when listing many (the orphan scan): 50 calls for 50,000.
const SCAN_PAGE: u32 = 1_000;

impl<T: Transport> Client<T> {
    pub fn new(transport: T, base_url: &str, account_id: &str, token: ApiToken, policy: RetryPolicy) -> Self {
        Self {
            transport,
            base_url: base_url.trim_end_matches('/').to_owned(),
            account_id: account_id.to_owned(),
            token,
            policy,
        }
    }

    /// Sends `endpoint`, retrying transient failures within the policy, and unwraps the envelope.
    pub async fn call<R: DeserializeOwned>(&self, endpoint: &Endpoint) -> Result<(R, Option<ResultInfo>), CfError> {
        let request = HttpRequest {
            method: endpoint.method,
            url: format!("{}/accounts/{}{}", self.base_url, self.account_id, endpoint.path),
            authorization: Some(self.token.header()),
            body: endpoint.body.clone(),
        };
        self.retrying(|| async {
            match self.transport.send(&request).await {
                Ok(response) => classify::<R>(endpoint.name, response),
                Err(error) => Err(CfError::Transport { endpoint: endpoint.name, error }),
            }
        })
        .await
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retry policy says stop.
    async fn retrying<O, F, Fut>(&self, mut attempt: F) -> Result<O, CfError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<O, CfError>>,
    {
        let mut attempts = 1;
        let mut waited = Duration::ZERO;
        loop {
            let error = match attempt().await {
                Ok(ok) => return Ok(ok),
                Err(e) => e,
            };
            let failure = match &error {
                CfError::RateLimited { retry_after, .. } => Failure::RateLimited { retry_after: *retry_after },
                CfError::Server { .. } | CfError::Decode { .. } => Failure::Server,
                CfError::Transport { .. } => Failure::Network,
                _ => Failure::Permanent,
            };
            match self.policy.next_delay(attempts, failure, waited, self.transport.random()) {
                Some(delay) => {
                    self.transport.sleep(delay).await;
                    waited += delay;
                    attempts += 1;
                }
                None => return Err(error),
            }
        }
    }

    pub async fn create_database(&self, name: &str) -> Result<Database, CfError> {
        Ok(self.call(&endpoints::create_database(name)).await?.0)
    }

    /// The database named exactly `name`, if any (the API's `name` filter is not trusted to be exact).
    pub async fn find_database(&self, name: &str) -> Result<Option<Database>, CfError> {
        Ok(self.list_databases(name).await?.into_iter().find(|d| d.name == name))
    }

    /// Every database whose name contains `filter`, all pages.
    pub async fn list_databases(&self, filter: &str) -> Result<Vec<Database>, CfError> {
        let mut all = Vec::new();
        for page in 1.. {
            let (items, info): (Vec<Database>, _) =
                self.call(&endpoints::list_databases(filter, page, SCAN_PAGE)).await?;
            let got = items.len() as u32;
            all.extend(items);
            let total = info.map_or(0, |i| i.total_count);
            if got < SCAN_PAGE || all.len() as u32 >= total {
                break;
            }
        }
        Ok(all)
    }

    /// Database `id` (a name works too, as the API accepts one in the id slot).
    pub async fn get_database(&self, id: &str) -> Result<Database, CfError> {
        Ok(self.call(&endpoints::get_database(id)).await?.0)
    }

    /// Deletes database `id`; one that does not exist counts as deleted.
    pub async fn delete_database(&self, id: &str) -> Result<(), CfError> {
        match self.call::<Value>(&endpoints::delete_database(id)).await {
            Ok(_) | Err(CfError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn query(&self, id: &str, sql: &str, params: &[Value]) -> Result<Vec<QueryResult>, CfError> {
        Ok(self.call(&endpoints::query(id, sql, params)).await?.0)
    }

    pub async fn query_batch(
        &self,
        id: &str,
        statements: &[(String, Vec<Value>)],
    ) -> Result<Vec<QueryResult>, CfError> {
        Ok(self.call(&endpoints::query_batch(id, statements)).await?.0)
    }

    pub async fn export(&self, id: &str, bookmark: Option<&str>) -> Result<ExportPoll, CfError> {
        Ok(self.call(&endpoints::export(id, bookmark)).await?.0)
    }

    /// Exports database `id`: starts the export and polls it every 250 ms, at most `polls` times,
    /// while it runs. `Ok(Err(reason))` when it is not complete: still running, or failed.
    pub async fn export_url(&self, id: &str, polls: u32) -> Result<Result<String, String>, CfError> {
        let mut poll = self.export(id, None).await?;
        for _ in 0..polls {
            if poll.status != "active" {
                break;
            }
            self.transport.sleep(Duration::from_millis(250)).await;
            let bookmark = poll.at_bookmark.clone().unwrap_or_default();
            poll = self.export(id, Some(&bookmark)).await?;
        }
        Ok(match (poll.status.as_str(), poll.result) {
            ("complete", Some(result)) => Ok(result.signed_url),
            ("active", _) => Err("export still running".into()),
            (status, _) => Err(format!("export {status}: {}", poll.error.unwrap_or_default())),
        })
    }

    /// One step of the import protocol (see [`endpoints::import`]).
    pub async fn import(&self, id: &str, body: Value) -> Result<ImportStep, CfError> {
        Ok(self.call(&endpoints::import(id, body)).await?.0)
    }

    /// The Time Travel bookmark of database `id` at `timestamp` (RFC 3339).
    pub async fn bookmark(&self, id: &str, timestamp: &str) -> Result<Bookmark, CfError> {
        Ok(self.call(&endpoints::bookmark(id, timestamp)).await?.0)
    }

    /// Restores database `id` in place to `bookmark` (Time Travel). Running it twice with the
    /// same bookmark gives the same state.
    pub async fn time_travel_restore(&self, id: &str, bookmark: &str) -> Result<TimeTravelRestore, CfError> {
        Ok(self.call(&endpoints::restore(id, bookmark)).await?.0)
    }

    /// The settings of a script of the account.
    pub async fn get_settings(&self, script: &str) -> Result<ScriptSettings, CfError> {
        self.get_script_settings(None, script).await
    }

    pub async fn patch_settings(&self, script: &str, bindings: &[Value]) -> Result<ScriptSettings, CfError> {
        self.patch_script_settings(None, script, bindings).await
    }

    /// The settings of a script of the account (`namespace: None`) or of a dispatch namespace.
    pub async fn get_script_settings(&self, namespace: Option<&str>, script: &str) -> Result<ScriptSettings, CfError> {
        Ok(self.call(&endpoints::get_script_settings(namespace, script)).await?.0)
    }

    pub async fn patch_script_settings(
        &self,
        namespace: Option<&str>,
        script: &str,
        bindings: &[Value],
    ) -> Result<ScriptSettings, CfError> {
        Ok(self.call(&endpoints::patch_script_settings(namespace, script, bindings)).await?.0)
    }

    /// Uploads a one-module script into dispatch namespace `namespace` (a PUT: idempotent).
    pub async fn upload_namespace_script(
        &self,
        namespace: &str,
        script: &str,
        metadata: Value,
        module_name: &str,
        module: &str,
    ) -> Result<(), CfError> {
        let endpoint = endpoints::upload_namespace_script(namespace, script, metadata, module_name, module);
        self.call::<Value>(&endpoint).await.map(drop)
    }

    /// The names of the scripts in dispatch namespace `namespace`.
    pub async fn list_namespace_scripts(&self, namespace: &str) -> Result<Vec<String>, CfError> {
        #[derive(Deserialize)]
        struct Item {
            script: Option<ScriptId>,
            id: Option<String>,
        }
        #[derive(Deserialize)]
        struct ScriptId {
            id: String,
        }
        let (items, _): (Vec<Item>, _) = self.call(&endpoints::list_namespace_scripts(namespace)).await?;
        Ok(items.into_iter().filter_map(|i| i.script.map(|s| s.id).or(i.id)).collect())
    }

    /// Deletes a script of dispatch namespace `namespace`; one already gone is not an error.
    pub async fn delete_namespace_script(&self, namespace: &str, script: &str) -> Result<(), CfError> {
        match self.call::<Value>(&endpoints::delete_namespace_script(namespace, script)).await {
            Ok(_) | Err(CfError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits `duration` on the transport's clock (used by callers between polls).
    pub async fn sleep(&self, duration: Duration) {
        self.transport.sleep(duration).await
    }
}

/// Maps one HTTP answer to a result or a typed error.
fn classify<R: DeserializeOwned>(
    endpoint: &'static str,
    response: HttpResponse,
) -> Result<(R, Option<ResultInfo>), CfError> {
    let status = response.status;
    let envelope: Result<Envelope<Value>, _> = serde_json::from_slice(&response.body);
    let (code, message) = match &envelope {
        Ok(e) => e.errors.first().map_or((0, String::new()), |m| (m.code, m.message.clone())),
        Err(_) => (0, String::new()),
    };
    if status == 429 || code == 971 {
        let retry_after = response.retry_after.as_deref().and_then(parse_retry_after);
        return Err(CfError::RateLimited { endpoint, retry_after });
    }
    if status >= 500 {
        return Err(CfError::Server { endpoint, status, code, message });
    }
    let envelope = envelope.map_err(|e| CfError::Decode { endpoint, detail: format!("HTTP {status}: {e}") })?;
    if (200..300).contains(&status) && envelope.success {
        let result = serde_json::from_value(envelope.result.unwrap_or(Value::Null))
            .map_err(|e| CfError::Decode { endpoint, detail: e.to_string() })?;
        return Ok((result, envelope.result_info));
    }
    Err(match (status, code) {
        (_, 7404) | (_, 10007) | (404, _) => CfError::NotFound { endpoint, code, message },
        (_, 7502) => CfError::AlreadyExists { endpoint },
        (_, 7406) => CfError::DatabaseLimit { endpoint },
        (401 | 403, _) | (_, 10000 | 10001 | 6003) => CfError::Unauthorized { endpoint, status, code },
        _ => CfError::Api { endpoint, status, code, message },
    })
}

#[cfg(test)]
mod tests;
