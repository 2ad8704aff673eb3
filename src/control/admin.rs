//! The platform admin API on the apex host, under `/v1/`.
//!
//! Authentication: `Authorization: Bearer <ADMIN_TOKEN>` (a Worker secret), compared in constant
//! time. Every change is written to the control plane's audit log.
//!
//! | route | does |
//! |---|---|
//! | `POST /v1/tenants` | create (or resume the same create): 201 when active, 202 + operation otherwise |
//! | `GET /v1/tenants?status=&cursor=&limit=` | list, by slug, paginated |
//! | `GET /v1/tenants/{slug}` | one tenant (and carries an unfinished operation forward) |
//! | `PATCH /v1/tenants/{slug}` | name, plan, suspend (`status: "suspended"`, `message`) or resume |
//! | `DELETE /v1/tenants/{slug}` | delete (backup first): 200 when deleted, 202 + operation otherwise |
//! | `GET /v1/tenants/{slug}/operations` | the tenant's lifecycle operations, newest first |
//! | `GET /v1/tenants/{slug}/backup` | the backup taken when the tenant was deleted (a SQL dump) |
//! | `POST /v1/migrations/apply` | migrate tenants that are behind: `{after?, limit?, concurrency?}`, returns `next` to continue |
//! | `GET /v1/migrations/status` | tenants per schema version, and the failures |
//! | `GET/POST /v1/roles`, `GET/PATCH/DELETE /v1/roles/{name}` | system roles, synced into every tenant |
//! | `GET/PUT/DELETE /v1/maintenance` | fleet-wide maintenance `{message, until?}` |
//! | `GET/PATCH /v1/settings` | default settings every tenant inherits (`{key: value}`, `null` removes) |
//! | `POST /v1/reconcile` | run the scheduled reconciler now, and report |

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use worker::{Env, Request, Response};

use super::lifecycle::{CreateInput, Lifecycle, Progress};
use super::store::{self, CreateStart, NewTenant, OperationRow, RoleWrite, TenantChanges, TenantRow};
use crate::core::lifecycle::{OperationKind, Plan, TenantStatus};
use crate::core::names::{BindingName, DatabaseName};
use crate::core::password;
use crate::core::slug::TenantSlug;
use crate::http::{self, ApiError, Method};

pub async fn handle(req: &Request, env: &Env, path: &str) -> Result<Response, ApiError> {
    authenticate(req, env)?;
    let segments: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    let method = Method::of(req);
    match segments.as_slice() {
        ["tenants"] => match method {
            Method::Post => create(req, env).await,
            Method::Get => list(req, env).await,
            _ => Err(http::method_not_allowed("GET, POST")),
        },
        ["tenants", slug] => {
            let slug = parse_slug(slug)?;
            match method {
                Method::Get => get(env, &slug).await,
                Method::Patch => update(req, env, &slug).await,
                Method::Delete => delete(env, &slug).await,
                _ => Err(http::method_not_allowed("GET, PATCH, DELETE")),
            }
        }
        ["tenants", slug, "operations"] => match method {
            Method::Get => operations(env, &parse_slug(slug)?).await,
            _ => Err(http::method_not_allowed("GET")),
        },
        ["tenants", slug, "backup"] => match method {
            Method::Get => backup(env, &parse_slug(slug)?).await,
            _ => Err(http::method_not_allowed("GET")),
        },
        ["migrations", "apply"] => match method {
            Method::Post => migrations_apply(req, env).await,
            _ => Err(http::method_not_allowed("POST")),
        },
        ["migrations", "status"] => match method {
            Method::Get => http::json(200, &super::fleet::status(&env.d1(super::CONTROL_BINDING)?).await?),
            _ => Err(http::method_not_allowed("GET")),
        },
        ["roles"] => match method {
            Method::Get => http::json(200, &json!({ "roles": store::roles(&env.d1(super::CONTROL_BINDING)?).await? })),
            Method::Post => role_write(req, env, None).await,
            _ => Err(http::method_not_allowed("GET, POST")),
        },
        ["roles", name] => match method {
            Method::Get => role_get(env, name).await,
            Method::Patch => role_write(req, env, Some(name)).await,
            Method::Delete => role_delete(env, name).await,
            _ => Err(http::method_not_allowed("GET, PATCH, DELETE")),
        },
        ["maintenance"] => match method {
            Method::Get => fleet_maintenance_get(env).await,
            Method::Put => fleet_maintenance_set(req, env).await,
            Method::Delete => fleet_maintenance_clear(env).await,
            _ => Err(http::method_not_allowed("GET, PUT, DELETE")),
        },
        ["settings"] => match method {
            Method::Get => settings_get(env).await,
            Method::Patch => settings_patch(req, env).await,
            _ => Err(http::method_not_allowed("GET, PATCH")),
        },
        ["reconcile"] => match method {
            Method::Post => http::json(200, &Lifecycle::from_env(env)?.reconcile_all().await?),
            _ => Err(http::method_not_allowed("POST")),
        },
        _ => Err(http::route_not_found()),
    }
}

fn authenticate(req: &Request, env: &Env) -> Result<(), ApiError> {
    let expected = env.secret("ADMIN_TOKEN").map(|s| s.to_string()).map_err(|_| {
        ApiError::Unavailable {
            code: "admin_not_configured",
            message: "the admin API is not configured".into(),
            retry_after: 60,
        }
        .inspect_log("secret ADMIN_TOKEN is not set")
    })?;
    // The tenant API's parser: the scheme in any letter case (RFC 9110 §11.1).
    let header = req.headers().get("Authorization").ok().flatten();
    match crate::core::token::bearer(header.as_deref()) {
        Ok(token) if !expected.is_empty() && crate::crypto::secrets_equal(token, &expected) => Ok(()),
        _ => Err(ApiError::Unauthorized { message: "a valid admin bearer token is required".into() }),
    }
}

fn parse_slug(raw: &str) -> Result<TenantSlug, ApiError> {
    // An invalid slug names no tenant.
    TenantSlug::parse(raw).map_err(|_| not_found(raw))
}

fn not_found(slug: &str) -> ApiError {
    ApiError::not_found(
        "tenant_not_found",
        format!("there is no tenant `{}`", slug.chars().take(60).collect::<String>()),
    )
}

/// A validated create request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    pub slug: TenantSlug,
    pub name: String,
    pub plan: Plan,
    pub admin_email: String,
    pub admin_password: String,
    /// Replace a deleted tenant's tombstone (and so its record of the backup).
    pub recreate: bool,
}

impl CreateRequest {
    /// Identifies "the same create" for idempotent re-sends (the password is not part of it).
    pub fn fingerprint(&self) -> String {
        let text = format!("{}\n{}\n{}\n{}", self.slug, self.name, self.plan.as_str(), self.admin_email.to_lowercase());
        crate::crypto::hex(&Sha256::digest(text.as_bytes()))
    }
}

fn string_field<'a>(body: &'a Map<String, Value>, key: &str, errors: &mut BTreeMap<String, String>) -> Option<&'a str> {
    match body.get(key) {
        None | Some(Value::Null) => {
            errors.insert(key.into(), "is required".into());
            None
        }
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            errors.insert(key.into(), "must be a string".into());
            None
        }
    }
}

fn valid_name(name: &str) -> Result<String, &'static str> {
    let trimmed = name.trim();
    match trimmed.chars().count() {
        0 => Err("must not be empty"),
        n if n > 100 => Err("must be at most 100 characters"),
        _ if trimmed.chars().any(char::is_control) => Err("must not contain control characters"),
        _ => Ok(trimmed.to_owned()),
    }
}

pub fn valid_email(email: &str) -> Result<String, &'static str> {
    let email = email.trim();
    let (local, domain) = email.split_once('@').ok_or("must be an email address")?;
    let ok = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && !domain.contains('@');
    if ok {
        Ok(email.to_owned())
    } else {
        Err("must be an email address")
    }
}

/// Validates a create body; every problem is reported at once, by field.
pub fn validate_create(body: &Map<String, Value>) -> Result<CreateRequest, BTreeMap<String, String>> {
    let mut errors = BTreeMap::new();
    let slug = string_field(body, "slug", &mut errors)
        .and_then(|s| TenantSlug::parse(s).map_err(|e| errors.insert("slug".into(), e.to_string())).ok());
    let name = string_field(body, "name", &mut errors)
        .and_then(|n| valid_name(n).map_err(|e| errors.insert("name".into(), e.into())).ok());
    let plan = match body.get("plan") {
        None | Some(Value::Null) => Some(Plan::Free),
        Some(Value::String(p)) => {
            p.parse().map_err(|_| errors.insert("plan".into(), "must be free, pro or enterprise".into())).ok()
        }
        Some(_) => {
            errors.insert("plan".into(), "must be a string".into());
            None
        }
    };
    let (mut email, mut password) = (None, None);
    match body.get("admin") {
        Some(Value::Object(admin)) => {
            let mut sub = BTreeMap::new();
            email = string_field(admin, "email", &mut sub)
                .and_then(|e| valid_email(e).map_err(|m| sub.insert("email".into(), m.into())).ok());
            password = string_field(admin, "password", &mut sub).and_then(|p| {
                password::validate_new(p)
                    .map(|_| p.to_owned())
                    .map_err(|m| sub.insert("password".into(), m.into()))
                    .ok()
            });
            for key in admin.keys().filter(|k| !["email", "password"].contains(&k.as_str())) {
                sub.insert(key.clone(), "is not a known field".into());
            }
            errors.extend(sub.into_iter().map(|(k, v)| (format!("admin.{k}"), v)));
        }
        None | Some(Value::Null) => {
            errors.insert("admin".into(), "is required: {\"email\": ..., \"password\": ...}".into());
        }
        Some(_) => {
            errors.insert("admin".into(), "must be an object".into());
        }
    }
    let recreate = match body.get("recreate") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.insert("recreate".into(), "must be a boolean".into());
            false
        }
    };
    for key in body.keys() {
        if !["slug", "name", "plan", "admin", "recreate"].contains(&key.as_str()) {
            errors.insert(key.clone(), "is not a known field".into());
        }
    }
    match (slug, name, plan, email, password) {
        (Some(slug), Some(name), Some(plan), Some(admin_email), Some(admin_password)) if errors.is_empty() => {
            Ok(CreateRequest { slug, name, plan, admin_email, admin_password, recreate })
        }
        _ => Err(errors),
    }
}

/// The public view of a tenant.
pub fn tenant_view(t: &TenantRow) -> Value {
    json!({
        "slug": t.slug,
        "name": t.display_name,
        "plan": t.plan,
        "status": t.status,
        "status_message": t.status_message,
        "database": { "name": t.database_name, "id": t.database_id },
        "binding": t.binding_name,
        "schema_version": t.schema_version,
        "backup": t.backup_location.as_ref().map(|l| json!({ "location": l, "bytes": t.backup_bytes, "sha256": t.backup_sha256 })),
        "last_error": t.last_error,
        "maintenance": t.maintenance_message.as_ref().map(|m| json!({ "message": m, "until": t.maintenance_until })),
        "created_at": t.created_at,
        "updated_at": t.updated_at,
        "deleted_at": t.deleted_at,
    })
}

/// The public view of an operation (never its input, which may hold a password hash).
pub fn operation_view(op: &OperationRow) -> Value {
    json!({
        "id": op.id,
        "tenant": op.tenant_slug,
        "kind": op.kind,
        "state": op.state,
        "steps_done": serde_json::from_str::<Value>(&op.steps).unwrap_or(json!([])),
        "next_step": op.next_step,
        "attempts": op.attempts,
        "last_error": op.last_error,
        "created_at": op.created_at,
        "updated_at": op.updated_at,
        "finished_at": op.finished_at,
    })
}

/// Answers with where a tenant stands after running its operation: `settled_status` (201/200)
/// when it got there, 202 with the operation otherwise.
async fn standing(
    lc: &Lifecycle<'_>,
    slug: &str,
    settled: TenantStatus,
    settled_status: u16,
) -> Result<Response, ApiError> {
    let tenant = store::get_tenant(&lc.db, slug).await?.ok_or_else(|| not_found(slug))?;
    let op = match store::open_operation_of(&lc.db, slug).await? {
        Some(op) => Some(op),
        None => store::list_operations(&lc.db, slug, 1).await?.into_iter().next(),
    };
    let status = if tenant.status() == settled { settled_status } else { 202 };
    let mut response =
        http::json(status, &json!({ "tenant": tenant_view(&tenant), "operation": op.as_ref().map(operation_view) }))?;
    let _ = response.headers_mut().set("Location", &format!("/v1/tenants/{slug}"));
    if status == 202 {
        let _ = response.headers_mut().set("Retry-After", "2");
    }
    Ok(response)
}

/// `POST /v1/tenants`. The decision is made by the batch that writes (see `store::start_create`):
/// the read before it only chooses which write to try, and the read after it says where the
/// tenant stands. So identical concurrent creates all join the one create that won, and only a
/// create with another name, plan or admin email is a 409.
async fn create(req: &Request, env: &Env) -> Result<Response, ApiError> {
    let body = http::read_json(req).await?;
    let request = validate_create(&body).map_err(ApiError::invalid_fields)?;
    let lc = Lifecycle::from_env(env)?;
    let slug = request.slug.as_str();
    let fingerprint = request.fingerprint();
    let database_name = DatabaseName::for_tenant(&lc.prefix, &request.slug);
    let binding_name = BindingName::for_tenant(&request.slug);
    let new = NewTenant {
        slug,
        display_name: &request.name,
        plan: request.plan.as_str(),
        database_name: database_name.as_str(),
        binding_name: binding_name.as_str(),
        fingerprint: &fingerprint,
    };
    let exists = || ApiError::Conflict { code: "tenant_exists", message: format!("tenant `{slug}` already exists") };

    let existing = store::get_tenant(&lc.db, slug).await?;
    let start = match &existing {
        None => CreateStart::Insert(&new),
        Some(t) if t.status() == TenantStatus::Deleted => {
            if !request.recreate {
                return Err(ApiError::Conflict {
                    code: "tenant_deleted",
                    message: format!(
                        "tenant `{slug}` was deleted and its tombstone keeps the backup record ({}); send \"recreate\": true to create it anew",
                        t.backup_location.as_deref().unwrap_or("no backup")
                    ),
                });
            }
            CreateStart::ReplaceTombstone(&new)
        }
        Some(t) if t.create_fingerprint.as_deref() != Some(fingerprint.as_str()) => return Err(exists()),
        // The same create again: say where it stands, resuming it if it is not done.
        Some(t) => match t.status() {
            TenantStatus::Active | TenantStatus::Suspended => return standing(&lc, slug, t.status(), 201).await,
            TenantStatus::Failed => CreateStart::Resume,
            TenantStatus::Provisioning => CreateStart::Join,
            TenantStatus::Deleting | TenantStatus::Deleted => return Err(deleting(slug)),
        },
    };
    // The slow part (PBKDF2) before the write, never between a check and its write. A join whose
    // operation is open already needs no hash.
    let needs_operation =
        !matches!(start, CreateStart::Join) || store::open_operation_of(&lc.db, slug).await?.is_none();
    if needs_operation {
        let input = CreateInput {
            admin_email: request.admin_email.clone(),
            admin_password_hash: Some(crate::crypto::hash_password(&request.admin_password).await?),
        };
        let input = serde_json::to_string(&input).map_err(ApiError::internal)?;
        let detail = json!({ "plan": request.plan.as_str(), "name": request.name,
            "previous_backup": existing.as_ref().and_then(|t| t.backup_location.as_deref()) });
        let id = crate::crypto::random_id()?;
        store::start_create(&lc.db, start, slug, &fingerprint, &id, &input, &detail).await?;
    }

    // Where it stands now, whoever's write won.
    let tenant = store::get_tenant(&lc.db, slug).await?.ok_or_else(|| ApiError::internal("tenant row vanished"))?;
    if tenant.create_fingerprint.as_deref() != Some(fingerprint.as_str()) {
        return Err(if tenant.status() == TenantStatus::Deleted { deleting(slug) } else { exists() });
    }
    match tenant.status() {
        TenantStatus::Provisioning => {}
        TenantStatus::Deleting | TenantStatus::Deleted => return Err(deleting(slug)),
        // Finished (or failed) by a twin meanwhile.
        settled => return standing(&lc, slug, settled, 201).await,
    }
    if let Some(op) = store::open_operation_of(&lc.db, slug).await? {
        run_logged(&lc, &op).await?;
    }
    standing(&lc, slug, TenantStatus::Active, 201).await
}

fn deleting(slug: &str) -> ApiError {
    ApiError::Conflict { code: "tenant_deleting", message: format!("tenant `{slug}` is being deleted") }
}

async fn run_logged(lc: &Lifecycle<'_>, op: &OperationRow) -> Result<Progress, ApiError> {
    let progress = lc.run(op).await?;
    match &progress {
        // The usual end of a create's first invocation: not worth a log line.
        Progress::Pending(reason) if reason.starts_with(super::lifecycle::NOT_LIVE_YET) => {}
        Progress::Pending(reason) => {
            worker::console_log!("operation {} ({}) on {} continues later: {reason}", op.id, op.kind, op.tenant_slug)
        }
        _ => {}
    }
    Ok(progress)
}

async fn list(req: &Request, env: &Env) -> Result<Response, ApiError> {
    let url = req.url()?;
    let query: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
    let bad =
        |name: &str, why: &str| ApiError::BadRequest { code: "invalid_parameter", message: format!("{name} {why}") };
    let status = match query.get("status") {
        None => None,
        Some(s) => Some(s.parse::<TenantStatus>().map_err(|_| bad("status", "must be a tenant status"))?),
    };
    let limit = match query.get("limit") {
        None => 50,
        Some(l) => {
            l.parse::<u32>().ok().filter(|n| (1..=200).contains(n)).ok_or_else(|| bad("limit", "must be 1 to 200"))?
        }
    };
    let cursor = query.get("cursor").map(String::as_str).unwrap_or("");
    if cursor.len() > 64 {
        return Err(bad("cursor", "is not a cursor this API gave"));
    }
    let db = env.d1(super::CONTROL_BINDING)?;
    let rows = store::list_tenants(&db, status, cursor, limit + 1).await?;
    let (rows, next) = http::split_page(rows, limit, |t| t.slug.clone());
    let page: Vec<Value> = rows.iter().map(tenant_view).collect();
    http::json(200, &json!({ "tenants": page, "next_cursor": next }))
}

async fn get(env: &Env, slug: &TenantSlug) -> Result<Response, ApiError> {
    let db = env.d1(super::CONTROL_BINDING)?;
    let tenant = store::get_tenant(&db, slug.as_str()).await?.ok_or_else(|| not_found(slug.as_str()))?;
    // Carry an unfinished operation forward: this invocation may see bindings the last did not.
    if let Some(op) = store::open_operation_of(&db, slug.as_str()).await? {
        let lc = Lifecycle::from_env(env)?;
        run_logged(&lc, &op).await?;
        let settled =
            if op.kind() == Some(OperationKind::Delete) { TenantStatus::Deleted } else { TenantStatus::Active };
        return standing(&lc, slug.as_str(), settled, 200).await;
    }
    http::json(200, &json!({ "tenant": tenant_view(&tenant) }))
}

async fn update(req: &Request, env: &Env, slug: &TenantSlug) -> Result<Response, ApiError> {
    let body = http::read_json(req).await?;
    let mut errors = BTreeMap::new();
    let mut name = None;
    let mut plan = None;
    let mut target = None;
    let mut message = None;
    let mut maintenance: Option<Option<Maintenance>> = None;
    for (key, value) in &body {
        match (key.as_str(), value) {
            ("name", Value::String(n)) => name = valid_name(n).map_err(|e| errors.insert("name".into(), e.into())).ok(),
            ("plan", Value::String(p)) => {
                plan = p
                    .parse::<Plan>()
                    .map_err(|_| errors.insert("plan".into(), "must be free, pro or enterprise".into()))
                    .ok()
            }
            ("status", Value::String(s)) => match s.as_str() {
                "suspended" => target = Some(TenantStatus::Suspended),
                "active" => target = Some(TenantStatus::Active),
                _ => {
                    errors.insert("status".into(), "must be suspended or active".into());
                }
            },
            ("maintenance", Value::Null) => maintenance = Some(None),
            ("maintenance", v) => match parse_maintenance(v) {
                Ok(m) => maintenance = Some(Some(m)),
                Err(e) => drop(errors.insert("maintenance".into(), e.into())),
            },
            ("message", Value::String(m)) if m.chars().count() <= 500 => message = Some(m.clone()),
            ("message", Value::Null) => {}
            ("message", _) => {
                errors.insert("message".into(), "must be a string of at most 500 characters".into());
            }
            ("name" | "plan" | "status", _) => {
                errors.insert(key.clone(), "must be a string".into());
            }
            _ => {
                errors.insert(key.clone(), "is not a known field".into());
            }
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    let db = env.d1(super::CONTROL_BINDING)?;
    let changes = TenantChanges {
        name: name.as_deref(),
        plan: plan.map(Plan::as_str),
        status: target.map(|to| (to, message.as_deref())),
        maintenance: maintenance.as_ref().map(|m| m.as_ref().map(|m| (m.message.as_str(), m.until.as_deref()))),
    };
    let request_id = crate::crypto::random_id()?;
    let updated = store::update_tenant(&db, slug.as_str(), &changes, &request_id, &Value::Object(body)).await?;
    // This isolate sees the change at once; others within the lookup cache's TTL.
    crate::tenant::registry::forget(slug.as_str());
    match updated {
        Some(tenant) => http::json(200, &json!({ "tenant": tenant_view(&tenant) })),
        // Nothing matched: say why, from the row as it is now.
        None => match store::get_tenant(&db, slug.as_str()).await? {
            Some(t) if t.status() != TenantStatus::Deleted => {
                let (from, to) = (t.status(), target.unwrap_or(t.status()));
                Err(ApiError::Conflict {
                    code: "invalid_transition",
                    message: if from.operator_can_set(to) {
                        format!("tenant `{slug}` cannot become {to} until its binding is in place; retry shortly")
                    } else {
                        format!(
                            "a tenant that is {from} cannot be made {to} by an operator (only active <-> suspended; \
                             the lifecycle moves the rest)"
                        )
                    },
                })
            }
            _ => Err(not_found(slug.as_str())),
        },
    }
}

async fn delete(env: &Env, slug: &TenantSlug) -> Result<Response, ApiError> {
    let lc = Lifecycle::from_env(env)?;
    let s = slug.as_str();
    let tenant = store::get_tenant(&lc.db, s).await?.ok_or_else(|| not_found(s))?;
    if tenant.status() != TenantStatus::Deleted {
        let request_id = crate::crypto::random_id()?;
        store::start_delete(&lc.db, s, &crate::crypto::random_id()?, &request_id).await?;
    }
    crate::tenant::registry::forget(s);
    if let Some(op) = store::open_operation_of(&lc.db, s).await? {
        if op.kind() == Some(OperationKind::Delete) {
            run_logged(&lc, &op).await?;
        }
    }
    standing(&lc, s, TenantStatus::Deleted, 200).await
}

fn role_not_found(name: &str) -> ApiError {
    ApiError::not_found(
        "role_not_found",
        format!("there is no system role `{}`", name.chars().take(40).collect::<String>()),
    )
}

async fn role_get(env: &Env, name: &str) -> Result<Response, ApiError> {
    let roles = store::roles(&env.d1(super::CONTROL_BINDING)?).await?;
    let role = roles.into_iter().find(|r| r.name == name).ok_or_else(|| role_not_found(name))?;
    http::json(200, &json!({ "role": role }))
}

/// Runs one bounded sync pass right away, so small fleets are in sync when the answer comes;
/// the cron reconciler carries larger fleets (and failures) on.
async fn sync_now(env: &Env, db: &worker::D1Database) -> Result<Value, ApiError> {
    let report = super::fleet::migrate_pass(env, db, "", 100, DEFAULT_CONCURRENCY).await?;
    Ok(json!({ "tenants_synced": report.migrated.len(), "failed": report.failed, "more": report.next.is_some() }))
}

/// `POST /v1/roles` (create) or `PATCH /v1/roles/{name}` (update). The write decides: a create
/// of a taken name and an update of a missing role change nothing (409 and 404).
async fn role_write(req: &Request, env: &Env, path_name: Option<&str>) -> Result<Response, ApiError> {
    let body = http::read_json(req).await?;
    let crate::core::roles::RoleChanges { name, description, permissions } =
        crate::core::roles::parse(&body, path_name.is_none()).map_err(ApiError::invalid_fields)?;
    let db = env.d1(super::CONTROL_BINDING)?;
    let request_id = crate::crypto::random_id()?;
    let detail = Value::Object(body);
    let (name, status) = match path_name {
        None => {
            let name = name.ok_or_else(|| ApiError::internal("validated name missing"))?;
            let write = RoleWrite::Create {
                description: description.as_deref().unwrap_or(""),
                permissions: permissions.as_deref().unwrap_or(&[]),
            };
            if !store::write_role(&db, &name, write, &request_id, &detail).await? {
                return Err(ApiError::Conflict {
                    code: "role_exists",
                    message: format!("system role `{name}` already exists"),
                });
            }
            (name, 201)
        }
        Some(n) => {
            let write = RoleWrite::Update { description: description.as_deref(), permissions: permissions.as_deref() };
            if !store::write_role(&db, n, write, &request_id, &detail).await? {
                return Err(role_not_found(n));
            }
            (n.to_owned(), 200)
        }
    };
    let role = store::roles(&db).await?.into_iter().find(|r| r.name == name).ok_or_else(|| role_not_found(&name))?;
    let sync = sync_now(env, &db).await?;
    http::json(status, &json!({ "role": role, "sync": sync }))
}

async fn role_delete(env: &Env, name: &str) -> Result<Response, ApiError> {
    let db = env.d1(super::CONTROL_BINDING)?;
    let request_id = crate::crypto::random_id()?;
    if !store::write_role(&db, name, RoleWrite::Delete, &request_id, &json!({ "name": name })).await? {
        return Err(role_not_found(name));
    }
    let sync = sync_now(env, &db).await?;
    http::json(200, &json!({ "deleted": { "role": name }, "sync": sync }))
}

/// A maintenance window: requests answer 503 with `message` until an admin lifts it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Maintenance {
    pub message: String,
    pub until: Option<String>,
}

fn parse_maintenance(value: &Value) -> Result<Maintenance, &'static str> {
    const SHAPE: &str = "must be {\"message\": text of 1 to 500 characters, \"until\"?: an RFC 3339 time} or null";
    let obj = value.as_object().ok_or(SHAPE)?;
    if obj.keys().any(|k| k != "message" && k != "until") {
        return Err(SHAPE);
    }
    let message = obj
        .get("message")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|m| (1..=500).contains(&m.chars().count()))
        .ok_or(SHAPE)?;
    let until = match obj.get("until") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) if chrono::DateTime::parse_from_rfc3339(u).is_ok() => Some(u.clone()),
        Some(_) => return Err(SHAPE),
    };
    Ok(Maintenance { message: message.to_owned(), until })
}

async fn fleet_maintenance_get(env: &Env) -> Result<Response, ApiError> {
    let db = env.d1(super::CONTROL_BINDING)?;
    let current = store::platform_value(&db, "maintenance").await?.and_then(|v| serde_json::from_str::<Value>(&v).ok());
    http::json(200, &json!({ "maintenance": current }))
}

async fn fleet_maintenance_set(req: &Request, env: &Env) -> Result<Response, ApiError> {
    let body = Value::Object(http::read_json(req).await?);
    let maintenance = parse_maintenance(&body)
        .map_err(|e| ApiError::invalid_fields([("maintenance".to_owned(), e.to_owned())].into()))?;
    let db = env.d1(super::CONTROL_BINDING)?;
    let value = serde_json::to_string(&maintenance).map_err(ApiError::internal)?;
    store::set_platform_value(&db, "maintenance", Some(&value)).await?;
    store::audit(&db, "admin", "fleet.maintenance.start", None, &crate::crypto::random_id()?, &body).await?;
    http::json(200, &json!({ "maintenance": maintenance }))
}

async fn fleet_maintenance_clear(env: &Env) -> Result<Response, ApiError> {
    let db = env.d1(super::CONTROL_BINDING)?;
    store::set_platform_value(&db, "maintenance", None).await?;
    store::audit(&db, "admin", "fleet.maintenance.end", None, &crate::crypto::random_id()?, &json!({})).await?;
    http::json(200, &json!({ "maintenance": null }))
}

/// Setting keys: lowercase, digits, `_` and `.`, starting with a letter, at most 64.
pub fn valid_setting_key(key: &str) -> bool {
    (1..=64).contains(&key.len())
        && key.starts_with(|c: char| c.is_ascii_lowercase())
        && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// Validates a `{key: value | null}` settings patch; values are JSON of at most 4 KiB.
pub fn validate_settings_patch(body: &Map<String, Value>) -> Result<Vec<(String, Option<String>)>, ApiError> {
    let mut fields = BTreeMap::new();
    let mut changes = Vec::new();
    if body.is_empty() || body.len() > 100 {
        fields.insert("settings".to_owned(), "send 1 to 100 keys".to_owned());
    }
    for (key, value) in body {
        if !valid_setting_key(key) {
            fields.insert(key.clone(), "is not a valid setting key (a-z, 0-9, '_', '.'; at most 64)".into());
            continue;
        }
        let text = value.to_string();
        if text.len() > 4096 {
            fields.insert(key.clone(), "must be at most 4 KiB of JSON".into());
            continue;
        }
        changes.push((key.clone(), (!value.is_null()).then_some(text)));
    }
    if fields.is_empty() {
        Ok(changes)
    } else {
        Err(ApiError::invalid_fields(fields))
    }
}

async fn settings_get(env: &Env) -> Result<Response, ApiError> {
    let db = env.d1(super::CONTROL_BINDING)?;
    let defaults = store::settings_defaults(&db).await?;
    http::json(200, &json!({ "settings": defaults }))
}

async fn settings_patch(req: &Request, env: &Env) -> Result<Response, ApiError> {
    let body = http::read_json(req).await?;
    let changes = validate_settings_patch(&body)?;
    let db = env.d1(super::CONTROL_BINDING)?;
    store::set_settings_defaults(&db, &changes).await?;
    store::audit(&db, "admin", "settings.update", None, &crate::crypto::random_id()?, &Value::Object(body)).await?;
    http::json(200, &json!({ "settings": store::settings_defaults(&db).await? }))
}

/// Default tenants migrated at once; the `MIGRATION_CONCURRENCY` var overrides it.
const DEFAULT_CONCURRENCY: usize = 8;

async fn migrations_apply(req: &Request, env: &Env) -> Result<Response, ApiError> {
    let body = http::read_json(req).await?;
    let mut fields = BTreeMap::new();
    let after = match body.get("after") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.len() <= 64 => s.clone(),
        Some(_) => {
            fields.insert("after".into(), "must be the `next` of a previous answer".into());
            String::new()
        }
    };
    let number = |key: &str, default: u64, max: u64, fields: &mut BTreeMap<String, String>| match body.get(key) {
        None | Some(Value::Null) => default,
        Some(v) => v.as_u64().filter(|n| (1..=max).contains(n)).unwrap_or_else(|| {
            fields.insert(key.into(), format!("must be a whole number from 1 to {max}"));
            default
        }),
    };
    let configured =
        env.var("MIGRATION_CONCURRENCY").ok().and_then(|v| v.to_string().parse().ok()).unwrap_or(DEFAULT_CONCURRENCY);
    let limit = number("limit", 100, 200, &mut fields) as u32;
    let concurrency = number("concurrency", configured as u64, 32, &mut fields) as usize;
    for key in body.keys() {
        if !["after", "limit", "concurrency"].contains(&key.as_str()) {
            fields.insert(key.clone(), "is not a known field".into());
        }
    }
    if !fields.is_empty() {
        return Err(ApiError::invalid_fields(fields));
    }
    let db = env.d1(super::CONTROL_BINDING)?;
    let report = super::fleet::migrate_pass(env, &db, &after, limit, concurrency).await?;
    let request_id = crate::crypto::random_id()?;
    store::audit(
        &db,
        "admin",
        "migrations.apply",
        None,
        &request_id,
        &json!({ "processed": report.processed, "failed": report.failed.len() }),
    )
    .await?;
    http::json(200, &report)
}

async fn backup(env: &Env, slug: &TenantSlug) -> Result<Response, ApiError> {
    let db = env.d1(super::CONTROL_BINDING)?;
    let tenant = store::get_tenant(&db, slug.as_str()).await?.ok_or_else(|| not_found(slug.as_str()))?;
    let none = || ApiError::not_found("backup_not_found", format!("tenant `{slug}` has no backup"));
    let key = tenant.backup_location.as_deref().and_then(|l| l.strip_prefix("r2://BACKUPS/")).ok_or_else(none)?;
    let bucket = env.bucket(super::lifecycle::BACKUPS_BINDING).map_err(ApiError::internal)?;
    let object = bucket.get(key).execute().await?.ok_or_else(none)?;
    let bytes = object.body().ok_or_else(none)?.bytes().await?;
    let mut response = Response::from_bytes(bytes)?;
    let headers = response.headers_mut();
    headers.set("Content-Type", "application/sql")?;
    headers.set("Content-Disposition", &format!("attachment; filename=\"{slug}.sql\""))?;
    if let Some(sha) = &tenant.backup_sha256 {
        headers.set("X-Backup-Sha256", sha)?;
    }
    Ok(response)
}

async fn operations(env: &Env, slug: &TenantSlug) -> Result<Response, ApiError> {
    let db = env.d1(super::CONTROL_BINDING)?;
    store::get_tenant(&db, slug.as_str()).await?.ok_or_else(|| not_found(slug.as_str()))?;
    let ops = store::list_operations(&db, slug.as_str(), 100).await?;
    http::json(200, &json!({ "operations": ops.iter().map(operation_view).collect::<Vec<_>>() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_valid_create() {
        let req = validate_create(&body(json!({
            "slug": "acme", "name": "  Acme Inc  ", "plan": "pro",
            "admin": { "email": "Ada@Acme.test", "password": "correct horse battery" }
        })))
        .unwrap();
        assert_eq!(req.slug.as_str(), "acme");
        assert_eq!(req.name, "Acme Inc");
        assert_eq!(req.plan, Plan::Pro);
        assert!(!req.recreate);
        // The fingerprint ignores the password and the email's case.
        let mut other = req.clone();
        other.admin_password = "another password!".into();
        other.admin_email = "ada@acme.test".into();
        assert_eq!(req.fingerprint(), other.fingerprint());
        other.plan = Plan::Free;
        assert_ne!(req.fingerprint(), other.fingerprint());
    }

    #[test]
    fn every_invalid_field_is_reported() {
        let errors = validate_create(&body(json!({
            "slug": "Bad Slug", "name": "", "plan": "gold", "admin": { "email": "nope", "password": "short" }, "extra": 1
        })))
        .unwrap_err();
        let keys: Vec<&str> = errors.keys().map(String::as_str).collect();
        assert_eq!(keys, ["admin.email", "admin.password", "extra", "name", "plan", "slug"]);

        let errors = validate_create(&body(json!({ "slug": 5, "name": ["x"], "admin": "x" }))).unwrap_err();
        assert_eq!(errors["slug"], "must be a string");
        assert_eq!(errors["name"], "must be a string");
        assert_eq!(errors["admin"], "must be an object");

        let errors = validate_create(&body(json!({
            "slug": "acme", "name": "Acme", "admin": { "email": "a@acme.test", "password": "a long password", "role": "owner" }
        })))
        .unwrap_err();
        assert_eq!(errors.keys().collect::<Vec<_>>(), ["admin.role"], "unknown keys inside admin are refused too");

        let errors = validate_create(&body(json!({}))).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
    }

    #[test]
    fn emails() {
        for ok in ["a@b.co", "first.last+tag@example.co.uk"] {
            assert!(valid_email(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "a@b", "@b.co", "a b@c.co", "a@.co", "a@b.", "a@b@c.co", "a\tb@c.co"] {
            assert!(valid_email(bad).is_err(), "{bad:?}");
        }
    }
}
