//! The part of the Cloudflare REST API tenantry calls, in memory: D1 databases (create, list, get,
//! delete, query, export with its presigned download) and Worker script settings (bindings), as a
//! [`Transport`]. Tests and the fleet simulation drive it through the real
//! [`crate::cloudflare::Client`], so retries, envelopes and error mapping are the real ones.
//!
//! Shapes and error codes follow the local cloud (`cloud/d1.mjs`, `cloud/workers.mjs`): 7400
//! malformed, 7404 unknown database, 7406 database limit, 7500 SQL error, 7502 name taken,
//! 7003 no route, 10405 wrong method, 10007 unknown script, 10021 bad binding, 10057 nothing to
//! inherit, 971 rate limited.
//!
//! On top of the API: faults (random at a rate, or scripted, see [`Fault`]), a random virtual
//! latency per call, a log of every call for rate accounting ([`FakeCloudflare::peak_in_window`]),
//! and a [`Crash`] point after every effect. Everything runs on tokio's clock, so under
//! `start_paused` a whole fleet's day passes in seconds.
//!
//! Not modelled: authentication (any token is accepted, any account id), the 1,200 requests per
//! 5 minutes limit (measure it with `peak_in_window(300_000)` instead), queries being refused
//! while an export runs, export expiry, `/raw`, `/import`, Time Travel, Worker versions and
//! deployments (10214 can be scripted with [`Fault::Api`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::cloudflare::{Body, HttpRequest, HttpResponse, Method, Transport, TransportError};
use crate::core::sql::split_statements;
use crate::fake::{Crash, MemorySql};
use crate::store::sql::{Param, Sql, Statement};

/// Where export downloads live: `{DOWNLOAD_BASE}{token}/{filename}`.
pub const DOWNLOAD_BASE: &str = "https://fake-export.invalid/";

/// A failure injected into one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 429, `Retry-After: 1`, code 971 (on a download: 503 `SlowDown`, as a presigned
    /// storage URL answers). Nothing is done.
    RateLimited,
    /// HTTP 500, code 7500 on D1 calls, 10013 ("unknown error") on Workers calls. Nothing is done.
    ServerError,
    /// No answer: the caller gets [`TransportError::Timeout`] after the timeout
    /// ([`FakeCloudflare::set_timeout`]). Nothing is done.
    Timeout,
    /// The effect lands, then the answer is lost: [`TransportError::Timeout`]. Drawn at random
    /// only for mutating calls (create, delete, query, settings PATCH).
    LostAnswer,
    /// Scripted only: this status and code with an error envelope, nothing done (e.g. 400 / 10214,
    /// "the latest version is not deployed").
    Api { status: u16, code: u32 },
}

/// The in-memory Cloudflare account. Clones share it: keep one to inspect, give one to the client.
#[derive(Clone)]
pub struct FakeCloudflare {
    inner: Rc<RefCell<State>>,
}

struct Db {
    uuid: String,
    name: String,
    created_at: String,
    seq: u64,
    sql: MemorySql,
}

impl Db {
    fn describe(&self) -> Value {
        json!({
            "uuid": self.uuid,
            "name": self.name,
            "created_at": self.created_at,
            "version": "production",
            "num_tables": 0,
            "file_size": 0,
        })
    }
}

struct Script {
    bindings: Vec<Value>,
    version: u64,
    /// Per tenant binding, each change: (the version that made it, the database it then binds).
    history: HashMap<String, Vec<(u64, Option<String>)>>,
}

impl Script {
    fn new(bindings: Vec<Value>) -> Self {
        Self { bindings, version: 0, history: HashMap::new() }
    }
}

struct Export {
    db: String,
    token: String,
    filename: String,
}

struct State {
    primary: String,
    scripts: BTreeMap<String, Script>,
    /// Per script, the serialized answer to a settings GET and the version it is of.
    settings_cache: HashMap<String, (u64, Vec<u8>)>,
    /// D1 ids bound by the Worker's own bindings: databases outside this fake, valid in a PATCH.
    external_ids: HashSet<String>,
    max_bindings: usize,
    max_databases: usize,
    /// By creation order (the list's order), so a list scans them without a lookup each.
    dbs: BTreeMap<u64, Db>,
    by_id: HashMap<String, u64>,
    by_name: HashMap<String, u64>,
    /// Every 3-byte substring of every name, to the databases whose name holds it: a name filter
    /// scans only the rarest of its trigrams' sets, not the whole account (50,000 finds of one
    /// name each among 50,000 databases would be 2.5 billion comparisons).
    trigrams: HashMap<[u8; 3], BTreeSet<u64>>,
    next_seq: u64,
    exports: HashMap<String, Export>,
    downloads: HashMap<String, Vec<u8>>,
    rng: u64,
    fault_rate: f64,
    download_faults: bool,
    scripted: VecDeque<(Option<String>, Fault)>,
    latency: (u64, u64),
    timeout: Duration,
    start: Instant,
    log: Vec<u64>,
    by_kind: BTreeMap<String, u64>,
    /// The size of each settings PATCH body that applied (script metadata per settings change).
    patch_bytes: Vec<usize>,
    authorized_downloads: u64,
    crash: Crash,
}

/// An API error answer.
struct ApiErr {
    status: u16,
    code: u32,
    message: String,
}

fn api_err(status: u16, code: u32, message: impl Into<String>) -> ApiErr {
    ApiErr { status, code, message: message.into() }
}

fn malformed(message: impl Into<String>) -> ApiErr {
    api_err(400, 7400, message)
}

fn not_found(id: &str) -> ApiErr {
    api_err(404, 7404, format!("The database {id} could not be found"))
}

fn binding_error(message: impl Into<String>) -> ApiErr {
    api_err(400, 10021, message)
}

/// A successful answer's `result` and `result_info`.
type Answer = Result<(Value, Option<Value>), ApiErr>;

fn envelope(answer: Answer) -> HttpResponse {
    match answer {
        Ok((result, info)) => {
            let mut body = json!({ "success": true, "errors": [], "messages": [], "result": result });
            if let Some(info) = info {
                body["result_info"] = info;
            }
            HttpResponse { status: 200, retry_after: None, body: body.to_string().into_bytes() }
        }
        Err(e) => error_response(e.status, e.code, &e.message, None),
    }
}

fn error_response(status: u16, code: u32, message: &str, retry_after: Option<&str>) -> HttpResponse {
    let body = json!({
        "success": false,
        "errors": [{ "code": code, "message": message }],
        "messages": [],
        "result": null,
    });
    HttpResponse { status, retry_after: retry_after.map(str::to_owned), body: body.to_string().into_bytes() }
}

fn plain(status: u16, text: &str) -> HttpResponse {
    HttpResponse { status, retry_after: None, body: text.as_bytes().to_vec() }
}

/// What a request asks for, read from its method and URL alone.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Create,
    List(String),
    Get(String),
    Delete(String),
    Query(String),
    Export(String),
    Download(String),
    /// Settings of a script: the account's (`name`) or a dispatch namespace's (`ns/name`).
    SettingsGet(String),
    SettingsPatch(String),
    /// A script uploaded into a dispatch namespace (`ns/name`).
    Upload(String),
    ScriptDelete(String),
    /// The scripts of a dispatch namespace.
    ScriptList(String),
    WrongMethod(&'static str),
    Unrouted,
}

impl Route {
    fn kind(&self) -> &'static str {
        match self {
            Self::Create => "d1.create",
            Self::List(_) => "d1.list",
            Self::Get(_) => "d1.get",
            Self::Delete(_) => "d1.delete",
            Self::Query(_) => "d1.query",
            Self::Export(_) => "d1.export",
            Self::Download(_) => "export.download",
            Self::SettingsGet(_) => "settings.get",
            Self::SettingsPatch(_) => "settings.patch",
            Self::Upload(_) => "scripts.upload",
            Self::ScriptDelete(_) => "scripts.delete",
            Self::ScriptList(_) => "scripts.list",
            Self::WrongMethod(kind) => kind,
            Self::Unrouted => "other",
        }
    }

    fn mutating(&self) -> bool {
        matches!(
            self,
            Self::Create
                | Self::Delete(_)
                | Self::Query(_)
                | Self::SettingsPatch(_)
                | Self::Upload(_)
                | Self::ScriptDelete(_)
        )
    }

    fn is_d1(&self) -> bool {
        self.kind().starts_with("d1.")
    }
}

/// One percent-encoded path segment, decoded (the client encodes with `form_urlencoded`).
fn decode(segment: &str) -> String {
    url::form_urlencoded::parse(segment.as_bytes()).next().map(|(k, _)| k.into_owned()).unwrap_or_default()
}

fn route(method: Method, url: &str) -> Route {
    if let Some(rest) = url.strip_prefix(DOWNLOAD_BASE) {
        let token = rest.split('/').next().unwrap_or("").to_owned();
        return if method == Method::Get { Route::Download(token) } else { Route::WrongMethod("export.download") };
    }
    let Some(at) = url.find("/accounts/") else { return Route::Unrouted };
    let after = &url[at + "/accounts/".len()..];
    let Some(slash) = after.find('/') else { return Route::Unrouted };
    let (path, query) = after[slash..].split_once('?').unwrap_or((&after[slash..], ""));
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let want = |allowed: Method, kind: &'static str, route: Route| {
        if method == allowed {
            route
        } else {
            Route::WrongMethod(kind)
        }
    };
    match segments.as_slice() {
        ["d1", "database"] => match method {
            Method::Post => Route::Create,
            Method::Get => Route::List(query.to_owned()),
            _ => Route::WrongMethod("d1.list"),
        },
        ["d1", "database", id] => match method {
            Method::Get => Route::Get(decode(id)),
            Method::Delete => Route::Delete(decode(id)),
            _ => Route::WrongMethod("d1.get"),
        },
        ["d1", "database", id, "query"] => want(Method::Post, "d1.query", Route::Query(decode(id))),
        ["d1", "database", id, "export"] => want(Method::Post, "d1.export", Route::Export(decode(id))),
        ["workers", "scripts", script, "settings"] => match method {
            Method::Get => Route::SettingsGet(decode(script)),
            Method::Patch => Route::SettingsPatch(decode(script)),
            _ => Route::WrongMethod("settings.get"),
        },
        ["workers", "dispatch", "namespaces", ns, "scripts"] => {
            want(Method::Get, "scripts.list", Route::ScriptList(decode(ns)))
        }
        ["workers", "dispatch", "namespaces", ns, "scripts", script] => match method {
            Method::Put => Route::Upload(format!("{}/{}", decode(ns), decode(script))),
            Method::Delete => Route::ScriptDelete(format!("{}/{}", decode(ns), decode(script))),
            _ => Route::WrongMethod("scripts.upload"),
        },
        ["workers", "dispatch", "namespaces", ns, "scripts", script, "settings"] => match method {
            Method::Get => Route::SettingsGet(format!("{}/{}", decode(ns), decode(script))),
            Method::Patch => Route::SettingsPatch(format!("{}/{}", decode(ns), decode(script))),
            _ => Route::WrongMethod("settings.get"),
        },
        _ => Route::Unrouted,
    }
}

/// `2026-01-01T00:00:00.000Z` plus `ms` (deterministic `created_at` values on the virtual clock).
fn timestamp(ms: u64) -> String {
    // Howard Hinnant's civil_from_days; 20454 is 2026-01-01 in days since 1970-01-01.
    let days = 20_454 + (ms / 86_400_000) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let t = ms % 86_400_000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        t / 3_600_000,
        t / 60_000 % 60,
        t / 1000 % 60,
        t % 1000
    )
}

fn trigrams(name: &str) -> impl Iterator<Item = [u8; 3]> + '_ {
    name.as_bytes().windows(3).map(|w| [w[0], w[1], w[2]])
}

fn valid_binding_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// The field holding a binding's value, for the types the local cloud knows; others pass as sent.
fn value_field(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "d1" => "id",
        "plain_text" | "secret_text" => "text",
        "json" => "json",
        "r2_bucket" => "bucket_name",
        "kv_namespace" => "namespace_id",
        "service" => "service",
        _ => return None,
    })
}

/// A binding as GET shows it: secrets without their value.
fn public_binding(b: &Value) -> Value {
    if b["type"] == "secret_text" {
        json!({ "type": "secret_text", "name": b["name"] })
    } else {
        b.clone()
    }
}

fn d1_bindings(bindings: &[Value]) -> Vec<(String, String)> {
    bindings
        .iter()
        .filter(|b| b["type"] == "d1")
        .filter_map(|b| Some((b["name"].as_str()?.to_owned(), b["id"].as_str()?.to_owned())))
        .filter(|(name, _)| name.starts_with("TENANT_"))
        .collect()
}

impl State {
    fn next_u64(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(Instant::now().duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    fn find(&self, id_or_name: &str) -> Option<&Db> {
        let seq = self.by_id.get(id_or_name).or_else(|| self.by_name.get(id_or_name))?;
        self.dbs.get(seq)
    }

    /// The fault for this request, if any: a scripted one first, else one drawn at the fault rate.
    fn pick_fault(&mut self, route: &Route) -> Option<Fault> {
        let kind = route.kind();
        if let Some(i) = self.scripted.iter().position(|(k, _)| k.as_deref().is_none_or(|k| k == kind)) {
            return self.scripted.remove(i).map(|(_, f)| f);
        }
        let download = matches!(route, Route::Download(_));
        if self.fault_rate <= 0.0 || (download && !self.download_faults) || self.next_f64() >= self.fault_rate {
            return None;
        }
        let kinds: &[Fault] = if route.mutating() {
            &[Fault::RateLimited, Fault::ServerError, Fault::Timeout, Fault::LostAnswer]
        } else {
            &[Fault::RateLimited, Fault::ServerError, Fault::Timeout]
        };
        Some(kinds[(self.next_u64() % kinds.len() as u64) as usize])
    }

    fn latency(&mut self) -> Duration {
        let (min, max) = self.latency;
        let ms = if max > min { min + self.next_u64() % (max - min + 1) } else { min };
        Duration::from_millis(ms)
    }

    fn new_database(&mut self, name: &str) -> (String, MemorySql) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let (a, b) = (self.next_u64(), self.next_u64());
        let uuid = format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b & 0x3fff),
            seq & 0xffff_ffff_ffff
        );
        let sql = MemorySql::new();
        let created_at = timestamp(self.now_ms());
        let db = Db { uuid: uuid.clone(), name: name.to_owned(), created_at, seq, sql: sql.clone() };
        self.by_name.insert(name.to_owned(), seq);
        self.by_id.insert(uuid.clone(), seq);
        for gram in trigrams(name) {
            self.trigrams.entry(gram).or_default().insert(seq);
        }
        self.dbs.insert(seq, db);
        (uuid, sql)
    }

    fn create(&mut self, body: &Body) -> (Answer, bool) {
        let name = match body {
            Body::Json(v) => v["name"].as_str().unwrap_or(""),
            _ => "",
        };
        let valid =
            (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return (Err(malformed("name is required: 1 to 64 letters, digits, '-' or '_'")), false);
        }
        if self.by_name.contains_key(name) {
            return (Err(api_err(400, 7502, "A database with that name already exists")), false);
        }
        if self.dbs.len() >= self.max_databases {
            return (Err(api_err(400, 7406, "Your account has exceeded the maximum number of D1 databases")), false);
        }
        self.new_database(name);
        (Ok((self.find(name).expect("just made").describe(), None)), true)
    }

    fn list(&self, query: &str) -> Answer {
        let mut page = 1u64;
        let mut per_page = 1000u64;
        let mut filter = None;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            let int = |min: u64, max: u64| match v.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(malformed(format!("{k} must be an integer from {min} to {max}"))),
            };
            match k.as_ref() {
                "page" => page = int(1, 1_000_000)?,
                "per_page" => per_page = int(10, 10_000)?,
                "name" => filter = Some(v.into_owned()),
                _ => {}
            }
        }
        let matching = self.matching(filter.as_deref());
        let mut total = 0u64;
        let mut items = Vec::new();
        let skip = (page - 1) * per_page;
        for db in matching {
            if total >= skip && total < skip + per_page {
                items.push(db.describe());
            }
            total += 1;
        }
        let info = json!({ "page": page, "per_page": per_page, "count": items.len(), "total_count": total });
        Ok((Value::Array(items), Some(info)))
    }

    /// The databases whose name contains `filter`, oldest first: a substring filter, as the local
    /// cloud's (the real one's exactness is undocumented).
    fn matching<'a>(&'a self, filter: Option<&'a str>) -> Box<dyn Iterator<Item = &'a Db> + 'a> {
        let Some(f) = filter.filter(|f| f.len() >= 3) else {
            return Box::new(self.dbs.values().filter(move |db| filter.is_none_or(|f| db.name.contains(f))));
        };
        let mut rarest: Option<&BTreeSet<u64>> = None;
        for gram in trigrams(f) {
            match self.trigrams.get(&gram) {
                None => return Box::new(std::iter::empty()),
                Some(set) if rarest.is_none_or(|r| set.len() < r.len()) => rarest = Some(set),
                Some(_) => {}
            }
        }
        let candidates = rarest.into_iter().flatten();
        Box::new(candidates.map(|seq| &self.dbs[seq]).filter(move |db| db.name.contains(f)))
    }

    fn delete(&mut self, id_or_name: &str) -> (Answer, bool) {
        let Some(seq) = self.find(id_or_name).map(|d| d.seq) else {
            return (Err(not_found(id_or_name)), false);
        };
        let db = self.dbs.remove(&seq).expect("found above");
        self.by_name.remove(&db.name);
        self.by_id.remove(&db.uuid);
        for gram in trigrams(&db.name) {
            if let Some(set) = self.trigrams.get_mut(&gram) {
                set.remove(&seq);
                if set.is_empty() {
                    self.trigrams.remove(&gram);
                }
            }
        }
        self.exports.retain(|_, e| e.db != db.uuid);
        (Ok((Value::Null, None)), true)
    }

    fn export(&mut self, id_or_name: &str, body: &Body) -> Answer {
        let Some(db) = self.find(id_or_name) else { return Err(not_found(id_or_name)) };
        let (uuid, name, sql) = (db.uuid.clone(), db.name.clone(), db.sql.clone());
        let Body::Json(input) = body else { return Err(malformed("The request body is not valid JSON")) };
        if input["output_format"] != "polling" {
            return Err(malformed("output_format must be polling"));
        }
        let answer = |fields: Value| {
            let mut result = json!({ "success": true, "type": "export", "messages": [], "error": "" });
            for (k, v) in fields.as_object().into_iter().flatten() {
                result[k] = v.clone();
            }
            Ok((result, None))
        };
        match input.get("current_bookmark").and_then(Value::as_str) {
            None => {
                // The dump is taken now; the first answer says it is still running, so clients
                // must poll as they must against the real API.
                let bookmark = format!("{:016x}{:016x}", self.next_u64(), self.next_u64());
                let token = format!("{:016x}{:016x}", self.next_u64(), self.next_u64());
                let filename = format!("{name}-{}.sql", self.now_ms());
                self.downloads.insert(token.clone(), sql.dump().into_bytes());
                self.exports.insert(bookmark.clone(), Export { db: uuid, token, filename });
                answer(json!({ "at_bookmark": bookmark, "status": "active", "messages": ["Generating SQL dump"] }))
            }
            Some(bookmark) => match self.exports.get(bookmark).filter(|e| e.db == uuid) {
                None => answer(json!({
                    "at_bookmark": bookmark,
                    "status": "error",
                    "error": "Unknown or expired export bookmark",
                })),
                Some(job) => answer(json!({
                    "at_bookmark": bookmark,
                    "status": "complete",
                    "messages": ["Uploaded part 1"],
                    "result": {
                        "filename": job.filename,
                        "signed_url": format!("{DOWNLOAD_BASE}{}/{}", job.token, job.filename),
                    },
                })),
            },
        }
    }

    fn settings_get(&self, script: &str) -> Answer {
        let Some(s) = self.scripts.get(script) else { return Err(unknown_script()) };
        Ok((json!({ "bindings": s.bindings.iter().map(public_binding).collect::<Vec<_>>() }), None))
    }

    fn settings_patch(&mut self, script: &str, body: &Body) -> (Answer, bool) {
        let Some(s) = self.scripts.get(script) else { return (Err(unknown_script()), false) };
        let Body::Settings(settings) = body else {
            return (Err(malformed("the body must be multipart/form-data")), false);
        };
        if !settings.is_object() {
            return (Err(malformed("settings must be a JSON object")), false);
        }
        let Some(next) = settings.get("bindings") else {
            let current = self.settings_get(script);
            return (current, false);
        };
        // Too many is refused before anything else is looked at, as a body over the metadata cap.
        if next.as_array().is_some_and(|list| list.len() > self.max_bindings) {
            let count = next.as_array().map_or(0, Vec::len);
            let message = format!(
                "too many bindings: {count} (this script takes at most {}; script metadata is limited to 1 MB)",
                self.max_bindings
            );
            return (Err(binding_error(message)), false);
        }
        let resolved = match self.resolve(&s.bindings, next) {
            Ok(r) => r,
            Err(e) => return (Err(e), false),
        };
        if resolved.len() > self.max_bindings {
            // The real API's code for too many bindings is not known (FACTS.md: ~5,000 fit, the
            // script's metadata is capped at 1 MB); 10021, the local cloud's binding error, stands in.
            let message = format!(
                "too many bindings: {} (this script takes at most {}; script metadata is limited to 1 MB)",
                resolved.len(),
                self.max_bindings
            );
            return (Err(binding_error(message)), false);
        }
        self.commit_bindings(script, resolved);
        (self.settings_get(script), true)
    }

    /// A script uploaded into a dispatch namespace (`key` = `ns/name`): created if new; its
    /// bindings are the metadata's, plus the previous version's of the types in `keep_bindings`.
    fn upload(&mut self, key: &str, body: &Body) -> (Answer, bool) {
        let Body::Script { metadata, .. } = body else {
            return (Err(malformed("the body must be multipart/form-data with a metadata part")), false);
        };
        let previous = self.scripts.get(key).map(|s| s.bindings.clone()).unwrap_or_default();
        let next = metadata.get("bindings").cloned().unwrap_or_else(|| json!([]));
        let mut resolved = match self.resolve(&previous, &next) {
            Ok(r) => r,
            Err(e) => return (Err(e), false),
        };
        let keep: Vec<&str> = metadata["keep_bindings"]
            .as_array()
            .map(|k| k.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for b in &previous {
            let kept = b["type"].as_str().is_some_and(|t| keep.contains(&t));
            if kept && !resolved.iter().any(|r| r["name"] == b["name"]) {
                resolved.push(b.clone());
            }
        }
        if resolved.len() > self.max_bindings {
            return (Err(binding_error(format!("too many bindings: {}", resolved.len()))), false);
        }
        self.scripts.entry(key.to_owned()).or_insert_with(|| Script::new(Vec::new()));
        self.commit_bindings(key, resolved);
        let name = key.rsplit('/').next().unwrap_or(key);
        (Ok((json!({ "id": name, "etag": format!("v{}", self.scripts[key].version) }), None)), true)
    }

    fn delete_script(&mut self, key: &str) -> (Answer, bool) {
        match self.scripts.remove(key) {
            Some(_) => {
                self.settings_cache.remove(key);
                (Ok((Value::Null, None)), true)
            }
            None => (Err(unknown_script()), false),
        }
    }

    /// Makes `resolved` script `key`'s binding set: a new version, with each tenant binding's
    /// change recorded against it.
    fn commit_bindings(&mut self, script: &str, resolved: Vec<Value>) {
        let s = self.scripts.get_mut(script).expect("the script exists");
        let before: HashMap<String, String> = d1_bindings(&s.bindings).into_iter().collect();
        let after: HashMap<String, String> = d1_bindings(&resolved).into_iter().collect();
        s.version += 1;
        for (name, id) in &after {
            if before.get(name) != Some(id) {
                s.history.entry(name.clone()).or_default().push((s.version, Some(id.clone())));
            }
        }
        for name in before.keys().filter(|n| !after.contains_key(*n)) {
            s.history.entry(name.clone()).or_default().push((s.version, None));
        }
        s.bindings = resolved;
    }

    /// The new binding set: `next` against the `previous` one (as the local cloud, strict).
    fn resolve(&self, previous: &[Value], next: &Value) -> Result<Vec<Value>, ApiErr> {
        let Some(next) = next.as_array() else { return Err(binding_error("bindings must be an array")) };
        let by_name: HashMap<&str, &Value> = previous.iter().filter_map(|b| Some((b["name"].as_str()?, b))).collect();
        let mut seen = HashSet::with_capacity(next.len());
        let mut out = Vec::with_capacity(next.len());
        for b in next {
            let name = b["name"].as_str().unwrap_or("");
            if !valid_binding_name(name) {
                return Err(binding_error(format!("binding name {} is not a valid JavaScript identifier", b["name"])));
            }
            if !seen.insert(name) {
                return Err(binding_error(format!("binding name '{name}' is used more than once")));
            }
            let kind = b["type"].as_str().unwrap_or("");
            let field = value_field(kind);
            let without_value =
                field.is_some_and(|f| b.get(f).is_none() && !(kind == "d1" && b.get("database_id").is_some()));
            if kind == "inherit" || without_value {
                let Some(old) = by_name.get(name) else {
                    return Err(api_err(
                        400,
                        10057,
                        format!("binding '{name}' cannot inherit: the previous version has no such binding"),
                    ));
                };
                if kind != "inherit" && old["type"] != kind {
                    return Err(binding_error(format!(
                        "binding '{name}' cannot inherit: it is a {} binding, not {kind}",
                        old["type"]
                    )));
                }
                out.push((*old).clone());
                continue;
            }
            if kind == "d1" {
                let id = b.get("id").or_else(|| b.get("database_id")).and_then(Value::as_str).unwrap_or("");
                if !self.by_id.contains_key(id) && !self.external_ids.contains(id) {
                    return Err(binding_error(format!(
                        "binding '{name}' refers to D1 database \"{id}\", which does not exist"
                    )));
                }
                out.push(json!({ "type": "d1", "name": name, "id": id }));
            } else {
                out.push(b.clone());
            }
        }
        Ok(out)
    }
}

fn unknown_script() -> ApiErr {
    api_err(404, 10007, "This Worker does not exist on your account.")
}

impl FakeCloudflare {
    /// An account with one Worker, `script_name`, whose settings hold `own_bindings` (the Worker's
    /// non-tenant bindings; D1 ids among them count as existing databases).
    pub fn new(script_name: &str, own_bindings: Vec<Value>) -> Self {
        let mut external_ids = HashSet::new();
        for b in &own_bindings {
            if let Some(id) = b.get("id").or_else(|| b.get("database_id")).and_then(Value::as_str) {
                if b["type"] == "d1" {
                    external_ids.insert(id.to_owned());
                }
            }
        }
        let mut scripts = BTreeMap::new();
        scripts.insert(script_name.to_owned(), Script::new(own_bindings));
        let state = State {
            settings_cache: HashMap::new(),
            primary: script_name.to_owned(),
            scripts,
            external_ids,
            max_bindings: 5_000,
            max_databases: 50_000,
            dbs: BTreeMap::new(),
            by_id: HashMap::new(),
            by_name: HashMap::new(),
            trigrams: HashMap::new(),
            next_seq: 1,
            exports: HashMap::new(),
            downloads: HashMap::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
            fault_rate: 0.0,
            download_faults: true,
            scripted: VecDeque::new(),
            latency: (5, 40),
            timeout: Duration::from_secs(10),
            start: Instant::now(),
            log: Vec::new(),
            by_kind: BTreeMap::new(),
            patch_bytes: Vec::new(),
            authorized_downloads: 0,
            crash: Crash::default(),
        };
        Self { inner: Rc::new(RefCell::new(state)) }
    }

    /// Seeds the random generator (latency, faults, ids, retry jitter); 0 is replaced by a constant.
    pub fn with_seed(self, seed: u64) -> Self {
        self.inner.borrow_mut().rng = if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed };
        self
    }

    /// Uses `crash` as the crash point after every effect (a database created or deleted, a query
    /// batch that ran, a settings PATCH that applied). With latency on, do not race the run
    /// against `Crash::wait`: its `yield_now` loop keeps the runtime busy, so paused time never
    /// advances and the call's latency never ends; poll `crashed()` after a virtual sleep instead.
    pub fn with_crash(self, crash: Crash) -> Self {
        self.inner.borrow_mut().crash = crash;
        self
    }

    pub fn crash(&self) -> Crash {
        self.inner.borrow().crash.clone()
    }

    /// Another Worker on the account (a shard), with its own bindings.
    pub fn add_script(&self, script_name: &str, own_bindings: Vec<Value>) {
        let mut s = self.inner.borrow_mut();
        for b in own_bindings.iter().filter(|b| b["type"] == "d1") {
            if let Some(id) = b.get("id").and_then(Value::as_str) {
                s.external_ids.insert(id.to_owned());
            }
        }
        s.scripts.insert(script_name.to_owned(), Script::new(own_bindings));
    }

    // --- inspection ---------------------------------------------------------------------------

    /// The database named `name`: its id and its data.
    pub fn database_by_name(&self, name: &str) -> Option<(String, MemorySql)> {
        let s = self.inner.borrow();
        let db = &s.dbs[s.by_name.get(name)?];
        Some((db.uuid.clone(), db.sql.clone()))
    }

    /// The data of database `id`.
    pub fn database(&self, id: &str) -> Option<MemorySql> {
        let s = self.inner.borrow();
        s.by_id.get(id).map(|seq| s.dbs[seq].sql.clone())
    }

    /// Every database's name, oldest first.
    pub fn database_names(&self) -> Vec<String> {
        let s = self.inner.borrow();
        s.dbs.values().map(|d| d.name.clone()).collect()
    }

    /// A database made behind the API's back (no call logged, no effect counted): an orphan, a
    /// leftover from an earlier run.
    pub fn add_database(&self, name: &str) -> (String, MemorySql) {
        self.inner.borrow_mut().new_database(name)
    }

    /// The main script's D1 bindings named `TENANT_*`: (binding name, database id), in order.
    pub fn tenant_bindings(&self) -> Vec<(String, String)> {
        let primary = self.inner.borrow().primary.clone();
        self.tenant_bindings_of(&primary)
    }

    pub fn tenant_bindings_of(&self, script: &str) -> Vec<(String, String)> {
        self.inner.borrow().scripts.get(script).map(|s| d1_bindings(&s.bindings)).unwrap_or_default()
    }

    /// The database tenant binding `binding` of the main script named at settings version
    /// `version`, if any: what an invocation of that version reaches by `env.d1(binding)`.
    pub fn bound_at(&self, binding: &str, version: u64) -> Option<MemorySql> {
        let primary = self.inner.borrow().primary.clone();
        self.bound_in_at(&primary, binding, version)
    }

    /// The database tenant binding `binding` of script `script` (a namespace's: `ns/name`) names at
    /// its settings version `version`, if any.
    pub fn bound_in_at(&self, script: &str, binding: &str, version: u64) -> Option<MemorySql> {
        let id = {
            let s = self.inner.borrow();
            let changes = s.scripts.get(script)?.history.get(binding)?;
            changes.iter().rev().find(|(v, _)| *v <= version)?.1.clone()?
        };
        self.database(&id)
    }

    /// The main script's whole binding set, as stored (secrets included).
    pub fn bindings(&self) -> Vec<Value> {
        let s = self.inner.borrow();
        s.scripts[&s.primary].bindings.clone()
    }

    /// How many successful settings PATCHes the main script has had.
    pub fn settings_version(&self) -> u64 {
        let s = self.inner.borrow();
        s.scripts[&s.primary].version
    }

    /// Every script's settings version: what one invocation sees (by name; `ns/name` for a
    /// namespace's scripts).
    pub fn settings_versions(&self) -> HashMap<String, u64> {
        self.inner.borrow().scripts.iter().map(|(k, s)| (k.clone(), s.version)).collect()
    }

    /// The scripts of dispatch namespace `ns`, by name.
    pub fn namespace_scripts(&self, ns: &str) -> Vec<String> {
        let prefix = format!("{ns}/");
        self.inner.borrow().scripts.keys().filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned)).collect()
    }

    /// The size in bytes of a settings PATCH body holding script `script`'s current bindings.
    pub fn metadata_bytes(&self, script: &str) -> usize {
        self.inner.borrow().scripts.get(script).map_or(0, |s| json!({ "bindings": s.bindings }).to_string().len())
    }

    /// The body size of every settings PATCH that applied since the counters were reset.
    pub fn patch_sizes(&self) -> Vec<usize> {
        self.inner.borrow().patch_bytes.clone()
    }

    pub fn settings_version_of(&self, script: &str) -> u64 {
        self.inner.borrow().scripts.get(script).map_or(0, |s| s.version)
    }

    /// Bindings a script may have (default 5,000).
    pub fn set_max_bindings(&self, max: usize) {
        self.inner.borrow_mut().max_bindings = max;
    }

    /// Databases the account may have (default 50,000, the paid plan's limit); beyond: 7406.
    pub fn set_max_databases(&self, max: usize) {
        self.inner.borrow_mut().max_databases = max;
    }

    // --- faults and latency -------------------------------------------------------------------

    /// Each request, independently, fails with this probability (a uniformly drawn [`Fault`]:
    /// rate limited, server error, timeout, and for mutating calls a lost answer).
    pub fn set_fault_rate(&self, rate: f64) {
        self.inner.borrow_mut().fault_rate = rate.clamp(0.0, 1.0);
    }

    /// Whether random faults also hit export downloads (default true).
    pub fn set_download_faults(&self, on: bool) {
        self.inner.borrow_mut().download_faults = on;
    }

    /// The next `n` requests (of any kind) fail with `fault`, before any random fault.
    pub fn fail_next(&self, n: usize, fault: Fault) {
        let mut s = self.inner.borrow_mut();
        s.scripted.extend(std::iter::repeat_n((None, fault), n));
    }

    /// The next `n` requests of `kind` (`d1.create`, `settings.patch`, ...) fail with `fault`.
    pub fn fail_next_on(&self, kind: &str, n: usize, fault: Fault) {
        let mut s = self.inner.borrow_mut();
        s.scripted.extend(std::iter::repeat_n((Some(kind.to_owned()), fault), n));
    }

    /// Each answer takes a random virtual time in `min_ms..=max_ms` (default 5..=40).
    pub fn set_latency(&self, min_ms: u64, max_ms: u64) {
        self.inner.borrow_mut().latency = (min_ms, max_ms.max(min_ms));
    }

    /// How long a request without an answer takes to time out (default 10 s, as the Worker's
    /// `FetchTransport`).
    pub fn set_timeout(&self, timeout: Duration) {
        self.inner.borrow_mut().timeout = timeout;
    }

    // --- accounting ---------------------------------------------------------------------------

    /// Requests that reached the API (faulted ones and downloads included) since the last reset.
    pub fn calls(&self) -> u64 {
        self.inner.borrow().log.len() as u64
    }

    /// [`Self::calls`] by kind: `d1.create`, `d1.list`, `d1.get`, `d1.delete`, `d1.query`,
    /// `d1.export`, `export.download`, `settings.get`, `settings.patch` (`other`: no route).
    pub fn calls_by_kind(&self) -> BTreeMap<String, u64> {
        self.inner.borrow().by_kind.clone()
    }

    /// The most calls in any window of `window_ms` (virtual) milliseconds: with 300,000, compare
    /// with the API's 1,200 requests per 5 minutes.
    pub fn peak_in_window(&self, window_ms: u64) -> u64 {
        let s = self.inner.borrow();
        let log = &s.log; // sorted: appended at arrival on a monotonic clock
        let (mut start, mut best) = (0, 0);
        for end in 0..log.len() {
            while log[end] - log[start] >= window_ms.max(1) {
                start += 1;
            }
            best = best.max(end - start + 1);
        }
        best as u64
    }

    pub fn reset_counters(&self) {
        let mut s = self.inner.borrow_mut();
        s.log.clear();
        s.by_kind.clear();
        s.patch_bytes.clear();
    }

    /// Download requests that carried an `Authorization` header (each was refused). Must stay 0:
    /// the API token must never reach a presigned URL.
    pub fn authorized_downloads(&self) -> u64 {
        self.inner.borrow().authorized_downloads
    }

    // --- serving ------------------------------------------------------------------------------

    /// Does what `route` asks; whether it changed anything.
    async fn serve(&self, route: &Route, request: &HttpRequest) -> (HttpResponse, bool) {
        let (answer, effect) = match route {
            Route::Query(id) => {
                let db = self.inner.borrow().find(id).map(|d| d.sql.clone());
                match db {
                    None => (Err(not_found(id)), false),
                    Some(db) => query(&db, &request.body).await,
                }
            }
            Route::Download(token) => {
                let mut s = self.inner.borrow_mut();
                if request.authorization.is_some() {
                    // As a presigned storage URL does when a second auth mechanism is sent.
                    s.authorized_downloads += 1;
                    return (plain(400, "InvalidArgument: only one auth mechanism allowed"), false);
                }
                return match s.downloads.get(token) {
                    Some(bytes) => (HttpResponse { status: 200, retry_after: None, body: bytes.clone() }, false),
                    None => (plain(404, "NoSuchKey"), false),
                };
            }
            Route::SettingsGet(script) => {
                // The answer only changes with the settings' version: serialized once per version
                // (a simulated fleet reads thousands of bindings per create).
                let mut s = self.inner.borrow_mut();
                let version = s.scripts.get(script).map(|sc| sc.version);
                if let (Some(version), Some((cached, bytes))) = (version, s.settings_cache.get(script)) {
                    if *cached == version {
                        return (HttpResponse { status: 200, retry_after: None, body: bytes.clone() }, false);
                    }
                }
                let response = envelope(s.settings_get(script));
                if let (Some(version), 200) = (version, response.status) {
                    s.settings_cache.insert(script.to_owned(), (version, response.body.clone()));
                }
                return (response, false);
            }
            _ => {
                let mut s = self.inner.borrow_mut();
                match route {
                    Route::Create => s.create(&request.body),
                    Route::List(q) => (s.list(q), false),
                    Route::Get(id) => (s.find(id).map(|d| (d.describe(), None)).ok_or_else(|| not_found(id)), false),
                    Route::Delete(id) => s.delete(id),
                    Route::Export(id) => (s.export(id, &request.body), false),
                    Route::SettingsPatch(script) => {
                        let out = s.settings_patch(script, &request.body);
                        if out.1 {
                            if let Body::Settings(settings) = &request.body {
                                s.patch_bytes.push(settings.to_string().len());
                            }
                        }
                        out
                    }
                    Route::Upload(key) => s.upload(key, &request.body),
                    Route::ScriptDelete(key) => s.delete_script(key),
                    Route::ScriptList(ns) => {
                        let prefix = format!("{ns}/");
                        let items: Vec<Value> = s
                            .scripts
                            .keys()
                            .filter_map(|k| k.strip_prefix(&prefix))
                            .map(|name| json!({ "dispatch_namespace": ns, "script": { "id": name } }))
                            .collect();
                        (Ok((Value::Array(items), None)), false)
                    }
                    Route::WrongMethod(_) => (Err(api_err(405, 10405, "Method not allowed on this route")), false),
                    _ => (Err(api_err(404, 7003, "No route for that URI")), false),
                }
            }
        };
        (envelope(answer), effect)
    }
}

/// `/query`: every statement of the body (`sql` split on `;`, or a `batch`) as one transaction.
async fn query(db: &MemorySql, body: &Body) -> (Answer, bool) {
    let Body::Json(input) = body else { return (Err(malformed("The request body is not valid JSON")), false) };
    let items: Vec<&Value> = match input.get("batch") {
        Some(Value::Array(batch)) => batch.iter().collect(),
        _ => vec![input],
    };
    let mut statements = Vec::new();
    for item in items {
        let Some(sql) = item.get("sql").and_then(Value::as_str) else {
            return (Err(malformed("sql is required")), false);
        };
        let params: Vec<Param> = match item.get("params") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(ps)) => ps.iter().map(Param::from).collect(),
            Some(_) => return (Err(malformed("params must be an array")), false),
        };
        let parts = split_statements(sql);
        if !params.is_empty() && parts.len() > 1 {
            return (Err(malformed("params can only be used with a single statement")), false);
        }
        statements.extend(parts.into_iter().map(|sql| Statement { sql, params: params.clone() }));
    }
    if statements.is_empty() {
        return (Err(api_err(400, 7500, "No SQL statements detected.")), false);
    }
    match db.batch(statements).await {
        Ok(outcomes) => {
            let results: Vec<Value> = outcomes
                .into_iter()
                .map(|o| {
                    json!({
                        "results": o.rows,
                        "success": true,
                        "meta": { "changes": o.changes, "changed_db": o.changes > 0, "duration": 0 },
                    })
                })
                .collect();
            (Ok((Value::Array(results), None)), true)
        }
        Err(e) => (Err(api_err(400, 7500, e.message)), false),
    }
}

/// Sleeps on tokio's clock; a zero duration does not yield, so with no latency a call completes
/// in one poll (and `Crash::wait`'s `yield_now` loop cannot starve it of virtual time).
async fn pause(duration: Duration) {
    if !duration.is_zero() {
        tokio::time::sleep(duration).await;
    }
}

impl Transport for FakeCloudflare {
    async fn send(&self, request: &HttpRequest) -> Result<HttpResponse, TransportError> {
        let route = route(request.method, &request.url);
        let (fault, latency, timeout, crash) = {
            let mut s = self.inner.borrow_mut();
            let now = s.now_ms();
            s.log.push(now);
            *s.by_kind.entry(route.kind().to_owned()).or_default() += 1;
            let fault = s.pick_fault(&route);
            (fault, s.latency(), s.timeout, s.crash.clone())
        };
        let download = matches!(route, Route::Download(_));
        match fault {
            Some(Fault::Timeout) => {
                pause(timeout).await;
                return Err(TransportError::Timeout);
            }
            Some(Fault::RateLimited) => {
                pause(latency).await;
                return Ok(if download {
                    plain(503, "SlowDown: please reduce your request rate")
                } else {
                    error_response(429, 971, "Please wait and consider throttling your request speed", Some("1"))
                });
            }
            Some(Fault::ServerError) => {
                pause(latency).await;
                return Ok(if download {
                    plain(500, "InternalError")
                } else if route.is_d1() {
                    error_response(500, 7500, "Internal error", None)
                } else {
                    error_response(500, 10013, "An unknown error has occurred", None)
                });
            }
            Some(Fault::Api { status, code }) => {
                pause(latency).await;
                return Ok(error_response(status, code, "injected failure", None));
            }
            Some(Fault::LostAnswer) | None => {}
        }
        pause(latency).await;
        let (response, effect) = self.serve(&route, request).await;
        if effect {
            crash.after_effect().await;
        }
        if fault == Some(Fault::LostAnswer) {
            pause(timeout.saturating_sub(latency)).await;
            return Err(TransportError::Timeout);
        }
        Ok(response)
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }

    fn random(&self) -> f64 {
        self.inner.borrow_mut().next_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudflare::{ApiToken, CfError, Client};
    use crate::core::retry::RetryPolicy;

    fn own() -> Vec<Value> {
        vec![
            json!({ "type": "d1", "name": "CONTROL_DB", "id": "control" }),
            json!({ "type": "plain_text", "name": "APEX", "text": "example.com" }),
        ]
    }

    fn setup() -> (FakeCloudflare, Client<FakeCloudflare>) {
        let fake = FakeCloudflare::new("tenantry", own()).with_seed(7);
        let client = Client::new(
            fake.clone(),
            "https://api.invalid/client/v4",
            "acct",
            ApiToken::new("t"),
            RetryPolicy::default(),
        );
        (fake, client)
    }

    fn inherit_own() -> Vec<Value> {
        vec![json!({ "type": "inherit", "name": "CONTROL_DB" }), json!({ "type": "inherit", "name": "APEX" })]
    }

    fn tenant(name: &str, id: &str) -> Value {
        json!({ "type": "d1", "name": name, "id": id })
    }

    #[tokio::test(start_paused = true)]
    async fn databases_are_created_found_listed_and_deleted() {
        let (fake, api) = setup();
        let acme = api.create_database("tenantry-acme").await.unwrap();
        assert_eq!(acme.name, "tenantry-acme");
        assert_eq!(acme.uuid.len(), 36);
        assert!(acme.created_at.as_deref().unwrap().starts_with("2026-01-01T00:00:00."));
        assert_eq!(fake.database_by_name("tenantry-acme").unwrap().0, acme.uuid);
        assert!(matches!(api.create_database("tenantry-acme").await, Err(CfError::AlreadyExists { .. })));
        assert!(matches!(api.create_database("no spaces").await, Err(CfError::Api { code: 7400, .. })));

        // The name filter matches substrings; find_database keeps the exact name only.
        api.create_database("tenantry-acme2").await.unwrap();
        assert_eq!(api.list_databases("tenantry-acme").await.unwrap().len(), 2);
        assert_eq!(api.find_database("tenantry-acme").await.unwrap().unwrap().uuid, acme.uuid);
        assert_eq!(api.find_database("tenantry-ac").await.unwrap(), None);

        // More than one page (the client asks 1,000 a page), oldest first.
        for i in 0..1030 {
            api.create_database(&format!("tenantry-t{i:04}")).await.unwrap();
        }
        let all = api.list_databases("tenantry-").await.unwrap();
        assert_eq!(all.len(), 1032);
        assert_eq!(all[0].name, "tenantry-acme");
        assert_eq!(all[1031].name, "tenantry-t1029");
        assert_eq!(fake.calls_by_kind()["d1.list"], 1 + 2 + 2);

        // By id or by name; deleting twice is fine for the client, the API says 7404.
        assert_eq!(api.get_database(&acme.uuid).await.unwrap().name, "tenantry-acme");
        assert_eq!(api.get_database("tenantry-acme").await.unwrap().uuid, acme.uuid);
        api.delete_database(&acme.uuid).await.unwrap();
        assert!(fake.database(&acme.uuid).is_none());
        api.delete_database(&acme.uuid).await.unwrap();
        match api.get_database(&acme.uuid).await {
            Err(CfError::NotFound { code: 7404, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(fake.database_names().len(), 1031);
        let names = |dbs: Vec<crate::cloudflare::Database>| dbs.into_iter().map(|d| d.name).collect::<Vec<_>>();
        assert_eq!(names(api.list_databases("tenantry-acme").await.unwrap()), vec!["tenantry-acme2"]);
        assert_eq!(names(api.list_databases("me2").await.unwrap()), vec!["tenantry-acme2"]);
        assert_eq!(api.list_databases("t0").await.unwrap().len(), 1000, "short filters match too");
        assert_eq!(api.list_databases("zzz").await.unwrap().len(), 0);
        assert_eq!(api.list_databases("").await.unwrap().len(), 1031);
        assert_eq!(fake.database_names()[0], "tenantry-acme2");
    }

    #[tokio::test(start_paused = true)]
    async fn the_database_limit_answers_7406() {
        let (fake, api) = setup();
        fake.set_max_databases(2);
        api.create_database("a").await.unwrap();
        api.create_database("b").await.unwrap();
        assert!(matches!(api.create_database("c").await, Err(CfError::DatabaseLimit { .. })));
        assert_eq!(fake.database_names(), vec!["a", "b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_query_is_one_transaction_and_a_failing_one_rolls_back() {
        let (fake, api) = setup();
        let db = api.create_database("tenantry-acme").await.unwrap();
        let out = api
            .query(&db.uuid, "CREATE TABLE t (name TEXT UNIQUE); INSERT INTO t VALUES ('a'), ('b');", &[])
            .await
            .unwrap();
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|r| r.success));
        let rows = api.query(&db.uuid, "SELECT name FROM t WHERE name = ?1", &[json!("b")]).await.unwrap();
        assert_eq!(rows[0].results, vec![json!({ "name": "b" }).as_object().unwrap().clone()]);

        // The second statement fails: the first is rolled back, and the error is SQLite's.
        match api.query(&db.uuid, "INSERT INTO t VALUES ('c'); INSERT INTO t VALUES ('a')", &[]).await {
            Err(CfError::Api { status: 400, code: 7500, message, .. }) => {
                assert!(message.contains("UNIQUE"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let memory = fake.database(&db.uuid).unwrap();
        let count = memory.run(Statement::new("SELECT count(*) AS n FROM t")).await.unwrap();
        assert_eq!(count.rows[0]["n"], json!(2));

        // A batch body runs as one transaction too.
        let batch = HttpRequest {
            method: Method::Post,
            url: format!("https://x.invalid/client/v4/accounts/a/d1/database/{}/query", db.uuid),
            authorization: Some("Bearer t".into()),
            body: Body::Json(json!({ "batch": [
                { "sql": "INSERT INTO t VALUES (?1)", "params": ["d"] },
                { "sql": "INSERT INTO t VALUES (?1)", "params": ["d"] },
            ] })),
        };
        fake.set_latency(0, 0);
        let answer = fake.send(&batch).await.unwrap();
        assert_eq!(answer.status, 400);
        let count = memory.run(Statement::new("SELECT count(*) AS n FROM t")).await.unwrap();
        assert_eq!(count.rows[0]["n"], json!(2));

        // Parameters go with one statement only; an unknown database is 7404.
        assert!(matches!(
            api.query(&db.uuid, "SELECT ?1; SELECT 2", &[json!(1)]).await,
            Err(CfError::Api { code: 7400, .. })
        ));
        assert!(matches!(api.query("nope", "SELECT 1", &[]).await, Err(CfError::NotFound { code: 7404, .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_settings_patch_replaces_tenant_bindings_and_inherits_own_ones() {
        let (fake, api) = setup();
        let a = api.create_database("tenantry-a").await.unwrap();
        let b = api.create_database("tenantry-b").await.unwrap();
        let mut list = inherit_own();
        list.push(tenant("TENANT_A", &a.uuid));
        let got = api.patch_settings("tenantry", &list).await.unwrap();
        assert_eq!(got.bindings.len(), 3);
        assert_eq!(fake.settings_version(), 1);
        assert_eq!(fake.tenant_bindings(), vec![("TENANT_A".to_owned(), a.uuid.clone())]);

        // The list replaces the set: TENANT_A goes, TENANT_B comes, own bindings stay as they were.
        let mut list = inherit_own();
        list.push(tenant("TENANT_B", &b.uuid));
        api.patch_settings("tenantry", &list).await.unwrap();
        assert_eq!(fake.tenant_bindings(), vec![("TENANT_B".to_owned(), b.uuid.clone())]);
        let settings = api.get_settings("tenantry").await.unwrap();
        assert_eq!(settings.bindings[..2], own()[..]);
        assert_eq!(fake.settings_version(), 2);

        // Refused changes change nothing.
        let e = api.patch_settings("tenantry", &[json!({ "type": "inherit", "name": "GONE" })]).await.unwrap_err();
        assert!(matches!(e, CfError::Api { status: 400, code: 10057, .. }), "{e:?}");
        let e = api.patch_settings("tenantry", &[tenant("TENANT_X", "no-such-id")]).await.unwrap_err();
        assert!(matches!(e, CfError::Api { status: 400, code: 10021, .. }), "{e:?}");
        let e = api.patch_settings("tenantry", &[tenant("TENANT_X", &a.uuid), tenant("TENANT_X", &b.uuid)]).await;
        assert!(matches!(e, Err(CfError::Api { code: 10021, .. })));
        assert_eq!(fake.settings_version(), 2);
        assert_eq!(fake.tenant_bindings(), vec![("TENANT_B".to_owned(), b.uuid.clone())]);

        // The Worker's own D1 id is valid to send in full; an unknown script is 10007.
        let mut list = vec![tenant("CONTROL_DB", "control"), json!({ "type": "plain_text", "name": "APEX" })];
        list.push(tenant("TENANT_A", &a.uuid));
        api.patch_settings("tenantry", &list).await.unwrap();
        assert_eq!(fake.bindings()[1], own()[1]);
        assert!(matches!(api.get_settings("other").await, Err(CfError::NotFound { code: 10007, .. })));
        assert!(matches!(api.patch_settings("other", &[]).await, Err(CfError::NotFound { code: 10007, .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn the_binding_limit_refuses_the_patch() {
        let (fake, api) = setup();
        fake.set_max_bindings(4);
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(api.create_database(&format!("t{i}")).await.unwrap().uuid);
        }
        let mut list = inherit_own();
        list.push(tenant("TENANT_0", &ids[0]));
        list.push(tenant("TENANT_1", &ids[1]));
        api.patch_settings("tenantry", &list).await.unwrap();
        list.push(tenant("TENANT_2", &ids[2]));
        match api.patch_settings("tenantry", &list).await {
            Err(CfError::Api { status: 400, code: 10021, message, .. }) => assert!(message.contains("too many")),
            other => panic!("{other:?}"),
        }
        assert_eq!(fake.tenant_bindings().len(), 2);
        assert_eq!(fake.settings_version(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_export_polls_then_downloads_the_dump_without_the_token() {
        let (fake, api) = setup();
        let db = api.create_database("tenantry-acme").await.unwrap();
        api.query(&db.uuid, "CREATE TABLE t (x TEXT); INSERT INTO t VALUES ('it''s')", &[]).await.unwrap();
        let first = api.export(&db.uuid, None).await.unwrap();
        assert_eq!(first.status, "active");
        assert!(first.result.is_none());
        let bookmark = first.at_bookmark.unwrap();
        let done = api.export(&db.uuid, Some(&bookmark)).await.unwrap();
        assert_eq!(done.status, "complete");
        let result = done.result.unwrap();
        assert!(result.signed_url.starts_with(DOWNLOAD_BASE));
        // As a backup fetches it (the lifecycle's only download).
        let backups = crate::fake::MemoryBackups::new(fake.clone(), crate::fake::Crash::default());
        crate::store::ports::Backups::store_export(&backups, &result.signed_url, "k", &[]).await.unwrap();
        let bytes = backups.get("k").unwrap();
        let dump = fake.database(&db.uuid).unwrap().dump();
        assert_eq!(String::from_utf8(bytes).unwrap(), dump);
        assert!(dump.contains("INSERT INTO \"t\" VALUES('it''s');"));
        assert_eq!(fake.authorized_downloads(), 0);
        assert_eq!(fake.calls_by_kind()["export.download"], 1);

        // A download carrying the token is refused and counted.
        let leak = HttpRequest {
            method: Method::Get,
            url: result.signed_url.clone(),
            authorization: Some("Bearer t".into()),
            body: Body::None,
        };
        assert_eq!(fake.send(&leak).await.unwrap().status, 400);
        assert_eq!(fake.authorized_downloads(), 1);

        // A bookmark of another database is an export error, not a dump.
        let other = api.create_database("tenantry-other").await.unwrap();
        assert_eq!(api.export(&other.uuid, Some(&bookmark)).await.unwrap().status, "error");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_answer_applies_the_effect_and_the_retry_sees_it() {
        let (fake, api) = setup();
        fake.fail_next_on("d1.create", 1, Fault::LostAnswer);
        let start = Instant::now();
        // The create landed, its answer was lost; the client's retry is told the name is taken.
        assert!(matches!(api.create_database("tenantry-acme").await, Err(CfError::AlreadyExists { .. })));
        assert!(fake.database_by_name("tenantry-acme").is_some());
        assert!(start.elapsed() >= Duration::from_secs(10), "the lost answer cost the timeout");
        assert_eq!(fake.calls_by_kind()["d1.create"], 2);

        // A PATCH is idempotent: lost once, sent again, applied twice with the same result.
        let id = fake.database_by_name("tenantry-acme").unwrap().0;
        fake.fail_next_on("settings.patch", 1, Fault::LostAnswer);
        let mut list = inherit_own();
        list.push(tenant("TENANT_ACME", &id));
        api.patch_settings("tenantry", &list).await.unwrap();
        assert_eq!(fake.settings_version(), 2);
        assert_eq!(fake.tenant_bindings(), vec![("TENANT_ACME".to_owned(), id)]);

        // A plain timeout does nothing.
        fake.fail_next(5, Fault::Timeout);
        assert!(matches!(api.create_database("tenantry-b").await, Err(CfError::Transport { .. })));
        assert!(fake.database_by_name("tenantry-b").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn scripted_and_random_faults_map_to_the_clients_errors() {
        let (fake, api) = setup();
        fake.fail_next(5, Fault::RateLimited);
        match api.get_settings("tenantry").await {
            Err(CfError::RateLimited { retry_after, .. }) => assert_eq!(retry_after, Some(Duration::from_secs(1))),
            other => panic!("{other:?}"),
        }
        fake.fail_next(1, Fault::ServerError);
        assert!(api.get_settings("tenantry").await.is_ok(), "one 500 is retried");
        fake.fail_next(1, Fault::Api { status: 400, code: 10214 });
        let e = api.patch_settings("tenantry", &inherit_own()).await.unwrap_err();
        assert!(e.is_transient() && matches!(e, CfError::Api { code: 10214, .. }), "{e:?}");

        // At a 30% rate, the retries carry most calls through; the same seed replays the same run.
        let run = |seed| async move {
            let fake = FakeCloudflare::new("tenantry", own()).with_seed(seed);
            fake.set_fault_rate(0.3);
            let api =
                Client::new(fake.clone(), "https://a.invalid", "acct", ApiToken::new("t"), RetryPolicy::default());
            let mut ok = 0;
            for i in 0..40 {
                ok += u32::from(api.create_database(&format!("db{i}")).await.is_ok());
            }
            (ok, fake.calls(), fake.database_names().len())
        };
        let (ok, calls, made) = run(3).await;
        assert!(ok >= 30, "{ok}");
        assert!(calls > 40, "{calls}");
        assert!(made >= ok as usize);
        assert_eq!(run(3).await, (ok, calls, made));
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_counter_finds_the_busiest_stretch() {
        let (fake, api) = setup();
        fake.set_latency(0, 0);
        for _ in 0..5 {
            api.get_settings("tenantry").await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..3 {
            api.list_databases("").await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(2000)).await;
        for _ in 0..4 {
            api.get_settings("tenantry").await.unwrap();
        }
        assert_eq!(fake.calls(), 12);
        assert_eq!(fake.peak_in_window(1000), 8);
        assert_eq!(fake.peak_in_window(100), 5);
        assert_eq!(fake.peak_in_window(10_000), 12);
        let kinds = fake.calls_by_kind();
        assert_eq!((kinds["settings.get"], kinds["d1.list"]), (9, 3));
        fake.reset_counters();
        assert_eq!((fake.calls(), fake.peak_in_window(1000)), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_stops_right_after_the_effect() {
        let crash = Crash::default();
        let fake = FakeCloudflare::new("tenantry", own()).with_crash(crash.clone());
        let api = Client::new(fake.clone(), "https://a.invalid", "acct", ApiToken::new("t"), RetryPolicy::default());
        api.create_database("tenantry-a").await.unwrap();
        crash.arm(2);
        // `Crash::wait` spins on `yield_now`, which keeps paused time from advancing: with latency,
        // wait on the virtual clock instead.
        let crashed = async {
            while !crash.crashed() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let run = async {
            api.query("tenantry-a", "CREATE TABLE t (x)", &[]).await.unwrap();
            api.create_database("tenantry-b").await.unwrap();
            api.create_database("tenantry-c").await.unwrap();
        };
        tokio::select! {
            _ = run => panic!("the run went on past the crash"),
            _ = crashed => {}
        }
        assert!(fake.database_by_name("tenantry-b").is_some(), "the effect landed");
        assert!(fake.database_by_name("tenantry-c").is_none());

        // Without latency nothing sleeps, and `Crash::wait` works as it does with `MemorySql`.
        let crash = Crash::default();
        let fake = FakeCloudflare::new("tenantry", own()).with_crash(crash.clone());
        fake.set_latency(0, 0);
        let api = Client::new(fake.clone(), "https://a.invalid", "acct", ApiToken::new("t"), RetryPolicy::default());
        crash.arm(1);
        tokio::select! {
            _ = api.create_database("tenantry-acme") => panic!("the run went on past the crash"),
            _ = crash.wait() => {}
        }
        assert!(fake.crash().crashed());
        assert!(fake.database_by_name("tenantry-acme").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_routes_and_methods() {
        let (fake, _) = setup();
        let send = |method, path: &str| {
            let request = HttpRequest {
                method,
                url: format!("https://api.invalid/client/v4/accounts/acct{path}"),
                authorization: Some("Bearer t".into()),
                body: Body::None,
            };
            let fake = fake.clone();
            async move { fake.send(&request).await.unwrap() }
        };
        let code = |r: HttpResponse| {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            (r.status, v["errors"][0]["code"].as_u64().unwrap())
        };
        assert_eq!(code(send(Method::Get, "/r2/buckets").await), (404, 7003));
        assert_eq!(code(send(Method::Patch, "/d1/database").await), (405, 10405));
        assert_eq!(code(send(Method::Get, "/d1/database?per_page=5").await), (400, 7400));
        assert_eq!(fake.calls_by_kind()["other"], 1);
    }

    #[test]
    fn timestamps_count_from_2026() {
        assert_eq!(timestamp(0), "2026-01-01T00:00:00.000Z");
        assert_eq!(timestamp(59 * 86_400_000 + 3_723_004), "2026-03-01T01:02:03.004Z");
    }
}
