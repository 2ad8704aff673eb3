//! `/api/projects`: the sample resource every user of a tenant can read and change. The plan's
//! project limit is decided by the insert itself, and each write's audit row is written in the
//! same batch only if the write happened, so both hold under concurrent requests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use wasm_bindgen::JsValue;
use worker::{Request, Response};

use super::context::returned;
use super::users::parse_id;
use super::TenantContext;
use crate::core::plans::{self, Resource};
use crate::http::{self, ApiError};

#[derive(Debug, Serialize, Deserialize)]
struct Project {
    id: i64,
    name: String,
    description: String,
    created_by: Option<i64>,
    created_at: String,
    updated_at: String,
}

const COLUMNS: &str = "id, name, description, created_by, created_at, updated_at";

fn not_found() -> ApiError {
    ApiError::not_found("project_not_found", "no such project in this tenant")
}

async fn find(ctx: &TenantContext, id: i64) -> Result<Project, ApiError> {
    ctx.find_by_id(&format!("SELECT {COLUMNS} FROM projects"), id, not_found).await
}

/// `{name?, description?}`; `name` required when creating.
fn parse(body: &Map<String, Value>, creating: bool) -> Result<(Option<String>, Option<String>), ApiError> {
    let mut fields = BTreeMap::new();
    let (mut name, mut description) = (None, None);
    for (key, value) in body {
        match (key.as_str(), value) {
            ("name", Value::String(n)) => {
                let n = n.trim();
                match n.chars().count() {
                    0 => drop(fields.insert("name".into(), "must not be empty".into())),
                    c if c > 200 => drop(fields.insert("name".into(), "must be at most 200 characters".into())),
                    _ => name = Some(n.to_owned()),
                }
            }
            ("description", Value::String(d)) if d.chars().count() <= 5000 => description = Some(d.clone()),
            ("description", Value::String(_)) => {
                drop(fields.insert("description".into(), "must be at most 5000 characters".into()))
            }
            ("name" | "description", _) => drop(fields.insert(key.clone(), "must be a string".into())),
            _ => drop(fields.insert(key.clone(), "is not a known field".into())),
        }
    }
    if creating && name.is_none() && !fields.contains_key("name") {
        fields.insert("name".into(), "is required".into());
    }
    if fields.is_empty() {
        Ok((name, description))
    } else {
        Err(ApiError::invalid_fields(fields))
    }
}

/// `GET /api/projects?limit=&cursor=`: oldest first.
pub async fn list(ctx: &TenantContext) -> Result<Response, ApiError> {
    let (projects, next) = ctx.page(&format!("SELECT {COLUMNS} FROM projects"), 100, false, |p: &Project| p.id).await?;
    http::json(200, &json!({ "projects": projects, "next_cursor": next }))
}

/// `POST /api/projects`: `{name, description?}`
pub async fn create(ctx: &TenantContext, req: &Request) -> Result<Response, ApiError> {
    let body = http::read_json(req).await?;
    let (name, description) = parse(&body, true)?;
    let name = name.ok_or_else(|| ApiError::internal("validated name missing"))?;
    // The plan's limit (NULL: unlimited) is decided by the insert itself.
    let limit = plans::limit(ctx.plan(), Resource::Projects);
    let db = ctx.db();
    let insert = db
        .prepare(format!(
            "INSERT INTO projects (name, description, created_by) SELECT ?1, ?2, ?3 \
             WHERE ?4 IS NULL OR (SELECT count(*) FROM projects) < ?4 RETURNING {COLUMNS}"
        ))
        .bind(&[
            JsValue::from_str(&name),
            JsValue::from_str(description.as_deref().unwrap_or("")),
            JsValue::from(ctx.user().id as f64),
            limit.map_or(JsValue::NULL, JsValue::from),
        ])?;
    let audit = ctx.audit_if_changed("project.create", &format!("project:{name}"), &json!({ "name": name }))?;
    let results = db.batch(vec![insert, audit]).await?;
    match returned::<Project>(&results, 0)? {
        Some(project) => http::json(201, &json!({ "project": project })),
        None => Err(ctx.plan_limit_reached(Resource::Projects).await?),
    }
}

/// `GET /api/projects/{id}`
pub async fn get(ctx: &TenantContext, id: &str) -> Result<Response, ApiError> {
    let id = parse_id(id, not_found)?;
    http::json(200, &json!({ "project": find(ctx, id).await? }))
}

/// `PATCH /api/projects/{id}`: `{name?, description?}`
pub async fn update(ctx: &TenantContext, req: &Request, id: &str) -> Result<Response, ApiError> {
    let id = parse_id(id, not_found)?;
    let body = http::read_json(req).await?;
    let (name, description) = parse(&body, false)?;
    let opt = |v: Option<&str>| v.map_or(JsValue::NULL, JsValue::from_str);
    let db = ctx.db();
    let update = db
        .prepare(format!(
            "UPDATE projects SET name = COALESCE(?2, name), description = COALESCE(?3, description), \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1 RETURNING {COLUMNS}"
        ))
        .bind(&[JsValue::from(id as f64), opt(name.as_deref()), opt(description.as_deref())])?;
    let changed: Vec<&str> = body.keys().map(String::as_str).collect();
    let audit = ctx.audit_if_changed("project.update", &format!("project:{id}"), &json!({ "fields": changed }))?;
    let results = db.batch(vec![update, audit]).await?;
    // No row: the project does not exist (or was deleted meanwhile).
    let project = returned::<Project>(&results, 0)?.ok_or_else(not_found)?;
    http::json(200, &json!({ "project": project }))
}

/// `DELETE /api/projects/{id}`
pub async fn delete(ctx: &TenantContext, id: &str) -> Result<Response, ApiError> {
    let id = parse_id(id, not_found)?;
    const ROW: &str = "FROM projects WHERE id = ?1";
    let db = ctx.db();
    let params = [JsValue::from(id as f64)];
    let audit =
        ctx.audit_rows("project.delete", &format!("project:{id}"), "json_object('name', name)", ROW, &params)?;
    let delete = db.prepare(format!("DELETE {ROW} RETURNING id")).bind(&params)?;
    let results = db.batch(vec![audit, delete]).await?;
    returned::<serde_json::Value>(&results, 1)?.ok_or_else(not_found)?;
    http::json(200, &json!({ "deleted": { "project": id } }))
}
