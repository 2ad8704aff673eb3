//! `/api/roles`: the platform's system roles (synced from the control plane, read-only here:
//! 403 on change) and the tenant's own roles (admins manage them). A name's uniqueness and
//! "not a system role" are decided by the write itself, and each audit row is written in the
//! same batch only if the write happened.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use wasm_bindgen::JsValue;
use worker::{Request, Response};

use super::context::returned;
use super::TenantContext;
use crate::core::roles;
use crate::http::{self, ApiError};

#[derive(Debug, Serialize, Deserialize)]
struct Row {
    name: String,
    description: String,
    permissions: String,
    is_system: i64,
    created_at: String,
    updated_at: String,
}

fn view(r: &Row) -> Value {
    json!({
        "name": r.name, "description": r.description,
        "permissions": serde_json::from_str::<Value>(&r.permissions).unwrap_or(json!([])),
        "is_system": r.is_system == 1, "created_at": r.created_at, "updated_at": r.updated_at,
    })
}

fn not_found() -> ApiError {
    ApiError::not_found("role_not_found", "no such role in this tenant")
}

const COLUMNS: &str = "name, description, permissions, is_system, created_at, updated_at";

async fn find(ctx: &TenantContext, name: &str) -> Result<Row, ApiError> {
    ctx.db()
        .prepare(format!("SELECT {COLUMNS} FROM roles WHERE name = ?1"))
        .bind(&[JsValue::from_str(name)])?
        .first::<Row>(None)
        .await?
        .ok_or_else(not_found)
}

/// A role the tenant may change: it exists and is not a system role.
async fn own_role(ctx: &TenantContext, name: &str) -> Result<Row, ApiError> {
    let role = find(ctx, name).await?;
    if role.is_system == 1 {
        return Err(ApiError::Forbidden {
            code: "system_role_read_only",
            message: format!("`{name}` is a platform role: it is managed by the platform and read-only here"),
        });
    }
    Ok(role)
}

/// `GET /api/roles`
pub async fn list(ctx: &TenantContext) -> Result<Response, ApiError> {
    let rows: Vec<Row> = ctx
        .db()
        .prepare(format!("SELECT {COLUMNS} FROM roles ORDER BY is_system DESC, name"))
        .all()
        .await?
        .results()?;
    http::json(200, &json!({ "roles": rows.iter().map(view).collect::<Vec<_>>() }))
}

/// `POST /api/roles` (admins): `{name, description?, permissions?}`
pub async fn create(ctx: &TenantContext, req: &Request) -> Result<Response, ApiError> {
    ctx.require_admin()?;
    let body = http::read_json(req).await?;
    let roles::RoleChanges { name, description, permissions } =
        roles::parse(&body, true).map_err(ApiError::invalid_fields)?;
    let name = name.ok_or_else(|| ApiError::internal("validated name missing"))?;
    let permissions = serde_json::to_string(&permissions.unwrap_or_default()).map_err(ApiError::internal)?;
    let db = ctx.db();
    // The name's uniqueness is decided by the insert: a taken name (a system role's too) inserts
    // nothing.
    let insert = db
        .prepare(format!(
            "INSERT INTO roles (name, description, permissions, is_system) VALUES (?1, ?2, ?3, 0) \
             ON CONFLICT (name) DO NOTHING RETURNING {COLUMNS}"
        ))
        .bind(&[
            JsValue::from_str(&name),
            JsValue::from_str(description.as_deref().unwrap_or("")),
            JsValue::from_str(&permissions),
        ])?;
    let audit = ctx.audit_if_changed("role.create", &format!("role:{name}"), &Value::Object(body))?;
    let results = db.batch(vec![insert, audit]).await?;
    let role = returned::<Row>(&results, 0)?
        .ok_or_else(|| ApiError::Conflict { code: "role_exists", message: format!("role `{name}` already exists") })?;
    http::json(201, &json!({ "role": view(&role) }))
}

/// The error for a change to role `name` that touched no row: it is a system role (403), or it
/// did not exist when the change ran (404, also when it has been created again since).
async fn refused(ctx: &TenantContext, name: &str) -> ApiError {
    own_role(ctx, name).await.err().unwrap_or_else(not_found)
}

/// `PATCH /api/roles/{name}` (admins; not system roles)
pub async fn update(ctx: &TenantContext, req: &Request, name: &str) -> Result<Response, ApiError> {
    ctx.require_admin()?;
    let body = http::read_json(req).await?;
    let roles::RoleChanges { description, permissions, .. } =
        roles::parse(&body, false).map_err(ApiError::invalid_fields)?;
    let permissions = permissions.map(|p| serde_json::to_string(&p).unwrap_or_else(|_| "[]".into()));
    let opt = |v: Option<&str>| v.map_or(JsValue::NULL, JsValue::from_str);
    let db = ctx.db();
    let update = db
        .prepare(format!(
            "UPDATE roles SET description = COALESCE(?2, description), permissions = COALESCE(?3, permissions), \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE name = ?1 AND is_system = 0 RETURNING {COLUMNS}"
        ))
        .bind(&[JsValue::from_str(name), opt(description.as_deref()), opt(permissions.as_deref())])?;
    let audit = ctx.audit_if_changed("role.update", &format!("role:{name}"), &Value::Object(body))?;
    let results = db.batch(vec![update, audit]).await?;
    match returned::<Row>(&results, 0)? {
        Some(role) => http::json(200, &json!({ "role": view(&role) })),
        None => Err(refused(ctx, name).await),
    }
}

/// `DELETE /api/roles/{name}` (admins; not system roles)
pub async fn delete(ctx: &TenantContext, name: &str) -> Result<Response, ApiError> {
    ctx.require_admin()?;
    let db = ctx.db();
    let delete = db
        .prepare("DELETE FROM roles WHERE name = ?1 AND is_system = 0 RETURNING name")
        .bind(&[JsValue::from_str(name)])?;
    let audit = ctx.audit_if_changed("role.delete", &format!("role:{name}"), &json!({}))?;
    let results = db.batch(vec![delete, audit]).await?;
    if returned::<Value>(&results, 0)?.is_none() {
        return Err(refused(ctx, name).await);
    }
    http::json(200, &json!({ "deleted": { "role": name } }))
}
