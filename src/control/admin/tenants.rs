//! `/v1/tenants`: create, list, get, update, delete, operations, backup; the create request's
//! validation and the JSON views of tenants and operations.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use worker::{Env, Request, Response};

use crate::control::lifecycle::{CreateInput, Lifecycle, Progress, Wait};
use crate::core::lifecycle::{OperationKind, Plan, TenantStatus};
use crate::core::names::{BindingName, DatabaseName};
use crate::core::password;
use crate::core::slug::TenantSlug;
use crate::core::validate::valid_email;
use crate::edge::{self, WorkerPlatform};
use crate::http::{self, ApiError};
use crate::store::control::{CreateStart, NewTenant, OperationRow, TenantChanges, TenantRow};
use crate::store::directory;

use super::fleet::{parse_maintenance, Maintenance};
use super::not_found;

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
        crate::core::digest::sha256_hex(text.as_bytes())
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
        "plan": t.plan.as_str(),
        "status": t.status,
        "status_message": t.status_message,
        "database": { "name": t.database_name, "id": t.database_id },
        "binding": t.binding_name,
        // The binding host holding the tenant's slot, and whether requests go through it (else
        // through the main Worker's own binding: the single-script layout, or mid-move).
        "host": t.host,
        "served_from": if t.on_host { t.host.as_deref() } else { None }.unwrap_or("main"),
        "schema_version": t.schema_version,
        "backup": t.backup_location.as_ref().map(|l| json!({ "location": l, "bytes": t.backup_bytes, "sha256": t.backup_sha256 })),
        "last_error": t.last_error,
        "maintenance": t.maintenance_message.as_ref().map(|m| json!({ "message": m, "until": t.maintenance_until })),
        "created_at": t.created_at,
        "updated_at": t.updated_at,
        "deleted_at": t.deleted_at,
        "restoring": t.restoring.is_some(),
        "plan_expires_at": t.terms.plan_expires_at,
        "quotas": t.terms.quotas(t.plan),
        "own_quotas": t.terms.quotas.as_deref().and_then(|q| serde_json::from_str::<Value>(q).ok()),
    })
}

/// The public view of an operation (never its input, which may hold a password hash).
pub fn operation_view(op: &OperationRow) -> Value {
    json!({
        "id": op.id,
        "tenant": op.tenant_slug,
        "kind": op.kind,
        "state": op.state,
        "steps_done": op.steps,
        "next_step": op.next_step,
        "attempts": op.attempts,
        "last_error": op.last_error,
        "created_at": op.created_at,
        "updated_at": op.updated_at,
        "finished_at": op.finished_at,
    })
}

/// When a request's operation counts as done: its tenant reaching a status (a create, a delete),
/// or the operation closing, whatever its end (a restore, whose tenant keeps its status).
#[derive(Clone, Copy)]
pub(super) enum Settled {
    At(TenantStatus),
    OperationClosed,
}

/// Answers with where a tenant stands after running its operation: `done_status` (201/200) once
/// it is `settled`, 202 with the operation otherwise.
pub(super) async fn standing(
    lc: &Lifecycle<WorkerPlatform>,
    slug: &str,
    settled: Settled,
    done_status: u16,
) -> Result<Response, ApiError> {
    let tenant = lc.store.tenant(slug).await?.ok_or_else(|| not_found(slug))?;
    let op = lc.store.current_operation_of(slug).await?;
    let done = match settled {
        Settled::At(status) => tenant.status == status,
        Settled::OperationClosed => !op.as_ref().is_some_and(|o| o.state.is_open()),
    };
    let status = if done { done_status } else { 202 };
    let mut response =
        http::json(status, &json!({ "tenant": tenant_view(&tenant), "operation": op.as_ref().map(operation_view) }))?;
    let _ = response.headers_mut().set("Location", &format!("/v1/tenants/{slug}"));
    if status == 202 {
        let _ = response.headers_mut().set("Retry-After", "2");
    }
    Ok(response)
}

/// `POST /v1/tenants`. The decision is made by the batch that writes (see `ControlStore::start_create`):
/// the read before it only chooses which write to try, and the read after it says where the
/// tenant stands. So identical concurrent creates all join the one create that won, and only a
/// create with another name, plan or admin email is a 409.
pub(super) async fn create(req: &Request, env: &Env) -> Result<Response, ApiError> {
    let body = http::read_json(req).await?;
    let request = validate_create(&body).map_err(ApiError::invalid_fields)?;
    let lc = Lifecycle::from_env(env)?;
    let slug = request.slug.as_str();
    let fingerprint = request.fingerprint();
    let database_name = DatabaseName::for_tenant(&lc.settings.prefix, &request.slug);
    let binding_name = BindingName::for_tenant(&request.slug);
    let new = NewTenant {
        slug,
        display_name: &request.name,
        plan: request.plan,
        database_name: database_name.as_str(),
        binding_name: binding_name.as_str(),
        fingerprint: &fingerprint,
    };
    let exists = || ApiError::Conflict { code: "tenant_exists", message: format!("tenant `{slug}` already exists") };

    let existing = lc.store.tenant(slug).await?;
    let start = match &existing {
        None => CreateStart::Insert(&new),
        Some(t) if t.status == TenantStatus::Deleted => {
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
        Some(t) => match t.status {
            TenantStatus::Active | TenantStatus::Suspended => {
                return standing(&lc, slug, Settled::At(t.status), 201).await
            }
            TenantStatus::Failed => CreateStart::Resume,
            TenantStatus::Provisioning => CreateStart::Join,
            TenantStatus::Deleting | TenantStatus::Deleted => return Err(deleting(slug)),
        },
    };
    // The slow part (PBKDF2) before the write, never between a check and its write. A join whose
    // operation is open already needs no hash.
    let needs_operation = !matches!(start, CreateStart::Join) || lc.store.open_operation_of(slug).await?.is_none();
    if needs_operation {
        let input = CreateInput {
            admin_email: request.admin_email.clone(),
            admin_password_hash: Some(crate::crypto::hash_password(&request.admin_password).await?),
        };
        let input = serde_json::to_string(&input).map_err(ApiError::internal)?;
        let detail = json!({ "plan": request.plan.as_str(), "name": request.name,
            "previous_backup": existing.as_ref().and_then(|t| t.backup_location.as_deref()) });
        let id = crate::crypto::random_id()?;
        lc.store.start_create(start, slug, &fingerprint, &id, &input, &detail).await?;
    }

    // Where it stands now, whoever's write won.
    let tenant = lc.store.tenant(slug).await?.ok_or_else(|| ApiError::internal("tenant row vanished"))?;
    if tenant.create_fingerprint.as_deref() != Some(fingerprint.as_str()) {
        return Err(if tenant.status == TenantStatus::Deleted { deleting(slug) } else { exists() });
    }
    match tenant.status {
        TenantStatus::Provisioning => {}
        TenantStatus::Deleting | TenantStatus::Deleted => return Err(deleting(slug)),
        // Finished (or failed) by a twin meanwhile.
        settled => return standing(&lc, slug, Settled::At(settled), 201).await,
    }
    if let Some(op) = lc.store.open_operation_of(slug).await? {
        run_logged(&lc, &op).await?;
    }
    standing(&lc, slug, Settled::At(TenantStatus::Active), 201).await
}

fn deleting(slug: &str) -> ApiError {
    ApiError::Conflict { code: "tenant_deleting", message: format!("tenant `{slug}` is being deleted") }
}

pub(super) async fn run_logged(lc: &Lifecycle<WorkerPlatform>, op: &OperationRow) -> Result<Progress, ApiError> {
    let progress = lc.run(op).await?;
    match &progress {
        // The usual end of a create's first invocation: not worth a log line.
        Progress::Pending(Wait::BindingNotLive) => {}
        Progress::Pending(wait) => crate::log::info(&format!(
            "operation {} ({}) on {} continues later: {wait}",
            op.id,
            op.kind.as_str(),
            op.tenant_slug
        )),
        _ => {}
    }
    Ok(progress)
}

pub(super) async fn list(req: &Request, env: &Env) -> Result<Response, ApiError> {
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
    let rows = edge::control(env)?.list_tenants(status, cursor, limit + 1).await?;
    let (rows, next) = http::split_page(rows, limit, |t| t.slug.clone());
    let page: Vec<Value> = rows.iter().map(tenant_view).collect();
    http::json(200, &json!({ "tenants": page, "next_cursor": next }))
}

pub(super) async fn get(env: &Env, slug: &TenantSlug) -> Result<Response, ApiError> {
    let db = edge::control(env)?;
    let tenant = db.tenant(slug.as_str()).await?.ok_or_else(|| not_found(slug.as_str()))?;
    // Carry an unfinished operation forward: this invocation may see bindings the last did not.
    if let Some(op) = db.open_operation_of(slug.as_str()).await? {
        let lc = Lifecycle::from_env(env)?;
        run_logged(&lc, &op).await?;
        if op.kind.is_restore() {
            return standing(&lc, slug.as_str(), Settled::OperationClosed, 200).await;
        }
        let settled = if op.kind == OperationKind::Delete { TenantStatus::Deleted } else { TenantStatus::Active };
        return standing(&lc, slug.as_str(), Settled::At(settled), 200).await;
    }
    http::json(200, &json!({ "tenant": tenant_view(&tenant) }))
}

pub(super) async fn update(req: &Request, env: &Env, slug: &TenantSlug) -> Result<Response, ApiError> {
    let body = http::read_json(req).await?;
    let mut errors = BTreeMap::new();
    let mut name = None;
    let mut plan = None;
    let mut target = None;
    let mut message = None;
    let mut maintenance: Option<Option<Maintenance>> = None;
    let mut plan_expires_at: Option<Option<String>> = None;
    let mut quotas: Option<Option<String>> = None;
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
            ("plan_expires_at", Value::Null) => plan_expires_at = Some(None),
            ("plan_expires_at", Value::String(at)) => match chrono::DateTime::parse_from_rfc3339(at) {
                Ok(at) => {
                    let utc = at.with_timezone(&chrono::Utc).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                    plan_expires_at = Some(Some(utc));
                }
                Err(_) => drop(errors.insert(key.clone(), "must be an RFC 3339 time or null".into())),
            },
            ("plan_expires_at", _) => drop(errors.insert(key.clone(), "must be an RFC 3339 time or null".into())),
            ("quotas", Value::Null) => quotas = Some(None),
            ("quotas", v) => match parse_quotas(v) {
                Ok(q) => quotas = Some(Some(q)),
                Err(e) => drop(errors.insert(key.clone(), e.into())),
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
    let db = edge::control(env)?;
    let changes = TenantChanges {
        name: name.as_deref(),
        plan,
        status: target.map(|to| (to, message.as_deref())),
        maintenance: maintenance.as_ref().map(|m| m.as_ref().map(|m| (m.message.as_str(), m.until.as_deref()))),
        plan_expires_at: plan_expires_at.as_ref().map(Option::as_deref),
        quotas: quotas.as_ref().map(Option::as_deref),
    };
    let request_id = crate::crypto::random_id()?;
    let updated = db.update_tenant(slug.as_str(), &changes, &request_id, &Value::Object(body)).await?;
    // This isolate sees the change at once; others within the lookup cache's TTL.
    directory::forget(slug);
    match updated {
        Some(tenant) => http::json(200, &json!({ "tenant": tenant_view(&tenant) })),
        // Nothing matched: say why, from the row as it is now.
        None => match db.tenant(slug.as_str()).await? {
            Some(t) if t.status != TenantStatus::Deleted => {
                let (from, to) = (t.status, target.unwrap_or(t.status));
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

/// The tenant's own quotas: `{"api_calls_per_month"?, "storage_bytes"?}`, each a whole number
/// or null (the plan's), as the JSON the control plane keeps.
fn parse_quotas(value: &Value) -> Result<String, &'static str> {
    const SHAPE: &str =
        "must be {\"api_calls_per_month\"?, \"storage_bytes\"?} (whole numbers, or null for the plan's) or null";
    let obj = value.as_object().ok_or(SHAPE)?;
    let mut quotas = crate::core::plans::Quotas::default();
    for (key, v) in obj {
        let n = match v {
            Value::Null => None,
            v => Some(v.as_u64().ok_or(SHAPE)?),
        };
        match key.as_str() {
            "api_calls_per_month" => quotas.api_calls_per_month = n,
            "storage_bytes" => quotas.storage_bytes = n,
            _ => return Err(SHAPE),
        }
    }
    serde_json::to_string(&quotas).map_err(|_| SHAPE)
}

pub(super) async fn delete(env: &Env, slug: &TenantSlug) -> Result<Response, ApiError> {
    let lc = Lifecycle::from_env(env)?;
    let s = slug.as_str();
    let tenant = lc.store.tenant(s).await?.ok_or_else(|| not_found(s))?;
    if tenant.status != TenantStatus::Deleted {
        let request_id = crate::crypto::random_id()?;
        lc.store.start_delete(s, &crate::crypto::random_id()?, &request_id).await?;
    }
    directory::forget(slug);
    if let Some(op) = lc.store.open_operation_of(s).await? {
        if op.kind == OperationKind::Delete {
            run_logged(&lc, &op).await?;
        }
    }
    standing(&lc, s, Settled::At(TenantStatus::Deleted), 200).await
}

pub(super) async fn backup(env: &Env, slug: &TenantSlug) -> Result<Response, ApiError> {
    let tenant = edge::control(env)?.tenant(slug.as_str()).await?.ok_or_else(|| not_found(slug.as_str()))?;
    let none = || ApiError::not_found("backup_not_found", format!("tenant `{slug}` has no backup"));
    let prefix = format!("r2://{}/", edge::BACKUPS_BINDING);
    let key = tenant.backup_location.as_deref().and_then(|l| l.strip_prefix(prefix.as_str())).ok_or_else(none)?;
    let response = edge::R2Backups::from_env(env).object_response(key).await.map_err(ApiError::internal)?;
    let mut response = response.ok_or_else(none)?;
    let headers = response.headers_mut();
    headers.set("Content-Type", "application/sql")?;
    headers.set("Content-Disposition", &format!("attachment; filename=\"{slug}.sql\""))?;
    if let Some(sha) = &tenant.backup_sha256 {
        headers.set("X-Backup-Sha256", sha)?;
    }
    Ok(response)
}

pub(super) async fn operations(env: &Env, slug: &TenantSlug) -> Result<Response, ApiError> {
    let db = edge::control(env)?;
    db.tenant(slug.as_str()).await?.ok_or_else(|| not_found(slug.as_str()))?;
    let ops = db.list_operations(slug.as_str(), 100).await?;
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
}
