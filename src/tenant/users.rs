//! `/api/me` and `/api/users`: a tenant's users. Only admins manage users; a user may read
//! themself. The last admin can be neither demoted nor deleted, and the plan's user limit
//! holds: each rule is decided by the write it guards, in one statement, so it holds under
//! concurrent requests too. The audit row is written in the same batch, only if the write was.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use wasm_bindgen::JsValue;
use worker::{Request, Response};

use super::context::returned;
use super::TenantContext;
use crate::core::password;
use crate::core::plans::{self, Resource};
use crate::core::token::Role;
use crate::core::validate::valid_email;
use crate::http::{self, ApiError};

#[derive(Debug, Serialize, Deserialize)]
struct User {
    id: i64,
    email: String,
    role: String,
    created_at: String,
    updated_at: String,
}

const COLUMNS: &str = "id, email, role, created_at, updated_at";

fn not_found() -> ApiError {
    ApiError::not_found("user_not_found", "no such user in this tenant")
}

/// A path id: a positive integer, or the resource does not exist.
pub fn parse_id(raw: &str, missing: fn() -> ApiError) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(missing)
}

async fn find(ctx: &TenantContext, id: i64) -> Result<User, ApiError> {
    ctx.find_by_id(&format!("SELECT {COLUMNS} FROM users"), id, not_found).await
}

/// `GET /api/me`
pub async fn me(ctx: &TenantContext) -> Result<Response, ApiError> {
    let user = find(ctx, ctx.user().id).await?;
    http::json(200, &json!({ "user": user, "tenant": { "slug": ctx.slug().as_str(), "plan": ctx.plan().as_str() } }))
}

/// `GET /api/users?limit=&cursor=` (admins)
pub async fn list(ctx: &TenantContext) -> Result<Response, ApiError> {
    ctx.require_admin()?;
    let (users, next) = ctx.page(&format!("SELECT {COLUMNS} FROM users"), 200, false, |u: &User| u.id).await?;
    http::json(200, &json!({ "users": users, "next_cursor": next }))
}

/// `GET /api/users/{id}` (admins, or the user themself)
pub async fn get(ctx: &TenantContext, id: &str) -> Result<Response, ApiError> {
    let id = parse_id(id, not_found)?;
    if id != ctx.user().id {
        ctx.require_admin()?;
    }
    http::json(200, &json!({ "user": find(ctx, id).await? }))
}

struct Changes {
    email: Option<String>,
    password: Option<String>,
    role: Option<Role>,
}

fn parse_changes(body: &Map<String, Value>, creating: bool) -> Result<Changes, ApiError> {
    let mut fields = BTreeMap::new();
    let mut changes = Changes { email: None, password: None, role: None };
    for (key, value) in body {
        match (key.as_str(), value) {
            ("email", Value::String(e)) => {
                changes.email = valid_email(e).map_err(|m| fields.insert("email".into(), m.into())).ok()
            }
            ("password", Value::String(p)) => {
                changes.password = password::validate_new(p)
                    .map(|_| p.clone())
                    .map_err(|m| fields.insert("password".into(), m.into()))
                    .ok()
            }
            ("role", Value::String(r)) => {
                changes.role = Role::parse(r).or_else(|| {
                    fields.insert("role".into(), "must be admin or member".into());
                    None
                })
            }
            ("email" | "password" | "role", _) => {
                fields.insert(key.clone(), "must be a string".into());
            }
            _ => {
                fields.insert(key.clone(), "is not a known field".into());
            }
        }
    }
    if creating {
        for (key, present) in [("email", changes.email.is_some()), ("password", changes.password.is_some())] {
            if !present && !body.contains_key(key) {
                fields.insert(key.into(), "is required".into());
            }
        }
    }
    if fields.is_empty() {
        Ok(changes)
    } else {
        Err(ApiError::invalid_fields(fields))
    }
}

fn email_taken() -> ApiError {
    ApiError::Conflict { code: "email_taken", message: "a user with this email already exists in this tenant".into() }
}

fn is_unique_violation(e: &worker::Error) -> bool {
    e.to_string().contains("UNIQUE constraint failed")
}

/// `POST /api/users` (admins): `{email, password, role?}`
pub async fn create(ctx: &TenantContext, req: &Request) -> Result<Response, ApiError> {
    ctx.require_admin()?;
    let body = http::read_json(req).await?;
    let changes = parse_changes(&body, true)?;
    let (Some(email), Some(password)) = (changes.email, changes.password) else {
        unreachable!("checked by parse_changes")
    };
    let role = changes.role.unwrap_or(Role::Member);
    // The slow part (PBKDF2) first; the rules are decided by the insert itself: under the plan's
    // limit (NULL: unlimited) and the email not taken, or no row.
    let hash = crate::crypto::hash_password(&password).await?;
    let limit = plans::limit(ctx.plan(), Resource::Users);
    let db = ctx.db();
    let insert = db
        .prepare(format!(
            "INSERT INTO users (email, password_hash, role) SELECT ?1, ?2, ?3 \
             WHERE ?4 IS NULL OR (SELECT count(*) FROM users) < ?4 \
             ON CONFLICT (email) DO NOTHING RETURNING {COLUMNS}"
        ))
        .bind(&[
            JsValue::from_str(&email),
            JsValue::from_str(&hash),
            JsValue::from_str(role.as_str()),
            limit.map_or(JsValue::NULL, JsValue::from),
        ])?;
    let audit = ctx.audit_if_changed("user.create", &format!("email:{email}"), &json!({ "role": role.as_str() }))?;
    let results = db.batch(vec![insert, audit]).await.map_err(unique_to(email_taken))?;
    match returned::<User>(&results, 0)? {
        Some(user) => http::json(201, &json!({ "user": user })),
        None if email_exists(ctx, &email).await? => Err(email_taken()),
        None => Err(ctx.plan_limit_reached(Resource::Users).await?),
    }
}

async fn email_exists(ctx: &TenantContext, email: &str) -> Result<bool, ApiError> {
    let row: Option<Value> = ctx
        .db()
        .prepare("SELECT 1 AS found FROM users WHERE email = ?1")
        .bind(&[JsValue::from_str(email)])?
        .first(None)
        .await?;
    Ok(row.is_some())
}

/// Maps a UNIQUE violation (a conflict that can still surface, e.g. a PATCH to a taken email)
/// to `conflict`, anything else to a 500.
fn unique_to(conflict: fn() -> ApiError) -> impl Fn(worker::Error) -> ApiError {
    move |e| if is_unique_violation(&e) { conflict() } else { e.into() }
}

/// `PATCH /api/users/{id}` (admins): `{email?, password?, role?}`
pub async fn update(ctx: &TenantContext, req: &Request, id: &str) -> Result<Response, ApiError> {
    ctx.require_admin()?;
    let id = parse_id(id, not_found)?;
    let body = http::read_json(req).await?;
    let changes = parse_changes(&body, false)?;
    let hash = match &changes.password {
        Some(p) => Some(crate::crypto::hash_password(p).await?),
        None => None,
    };
    let opt = |v: Option<&str>| v.map_or(JsValue::NULL, JsValue::from_str);
    let db = ctx.db();
    // "The last admin cannot be demoted" is decided by the update itself (two admins demoting
    // each other at once: the second finds one admin left). `?4 IS 'member'`: NULL-safe.
    let update = db
        .prepare(format!(
            "UPDATE users SET email = COALESCE(?2, email), password_hash = COALESCE(?3, password_hash), \
             role = COALESCE(?4, role), updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') \
             WHERE id = ?1 AND NOT (?4 IS 'member' AND role = 'admin' \
             AND (SELECT count(*) FROM users WHERE role = 'admin') <= 1) RETURNING {COLUMNS}"
        ))
        .bind(&[
            JsValue::from(id as f64),
            opt(changes.email.as_deref()),
            opt(hash.as_deref()),
            opt(changes.role.map(Role::as_str)),
        ])?;
    let changed: Vec<&str> = body.keys().map(String::as_str).collect();
    let audit = ctx.audit_if_changed("user.update", &format!("user:{id}"), &json!({ "fields": changed }))?;
    let results = db.batch(vec![update, audit]).await.map_err(unique_to(email_taken))?;
    ctx.forget_user(id);
    match returned::<User>(&results, 0)? {
        Some(user) => http::json(200, &json!({ "user": user })),
        // No row: the user is gone (404 from `find`), or they are the last admin.
        None => {
            find(ctx, id).await?;
            Err(ApiError::Conflict { code: "last_admin", message: "the tenant's last admin cannot be demoted".into() })
        }
    }
}

/// `DELETE /api/users/{id}` (admins)
pub async fn delete(ctx: &TenantContext, id: &str) -> Result<Response, ApiError> {
    ctx.require_admin()?;
    let id = parse_id(id, not_found)?;
    // The rule, decided by the delete itself: not the tenant's last admin.
    const RULE: &str =
        "FROM users WHERE id = ?1 AND (role != 'admin' OR (SELECT count(*) FROM users WHERE role = 'admin') > 1)";
    let db = ctx.db();
    let params = [JsValue::from(id as f64)];
    let audit = ctx.audit_rows("user.delete", &format!("user:{id}"), "json_object('email', email)", RULE, &params)?;
    let delete = db.prepare(format!("DELETE {RULE} RETURNING id")).bind(&params)?;
    let results = db.batch(vec![audit, delete]).await?;
    ctx.forget_user(id);
    if returned::<Value>(&results, 1)?.is_none() {
        find(ctx, id).await?;
        return Err(ApiError::Conflict {
            code: "last_admin",
            message: "the tenant's last admin cannot be deleted".into(),
        });
    }
    http::json(200, &json!({ "deleted": { "user": id } }))
}
