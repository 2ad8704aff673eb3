//! `/v1/roles`: the platform's system roles, synced into every tenant.

use serde_json::{json, Value};
use worker::{Env, Request, Response};

use crate::edge;
use crate::http::{self, ApiError};
use crate::store::control::{ControlStore, RoleWrite};

fn role_not_found(name: &str) -> ApiError {
    ApiError::not_found(
        "role_not_found",
        format!("there is no system role `{}`", name.chars().take(40).collect::<String>()),
    )
}

pub(super) async fn role_get(env: &Env, name: &str) -> Result<Response, ApiError> {
    let roles = edge::control(env)?.roles().await?;
    let role = roles.into_iter().find(|r| r.name == name).ok_or_else(|| role_not_found(name))?;
    http::json(200, &json!({ "role": role }))
}

/// Runs one bounded sync pass right away, so small fleets are in sync when the answer comes;
/// the cron reconciler carries larger fleets (and failures) on.
async fn sync_now(env: &Env, db: &ControlStore<worker::D1Database>) -> Result<Value, ApiError> {
    let concurrency = edge::config(env)?.migration_concurrency;
    let report = crate::control::fleet::migrate_pass(db, &edge::EnvBindings(env.clone()), "", 100, concurrency).await?;
    Ok(json!({ "tenants_synced": report.migrated.len(), "failed": report.failed, "more": report.next.is_some() }))
}

/// `POST /v1/roles` (create) or `PATCH /v1/roles/{name}` (update). The write decides: a create
/// of a taken name and an update of a missing role change nothing (409 and 404).
pub(super) async fn role_write(req: &Request, env: &Env, path_name: Option<&str>) -> Result<Response, ApiError> {
    let body = http::read_json(req).await?;
    let crate::core::roles::RoleChanges { name, description, permissions } =
        crate::core::roles::parse(&body, path_name.is_none()).map_err(ApiError::invalid_fields)?;
    let db = edge::control(env)?;
    let request_id = crate::crypto::random_id()?;
    let detail = Value::Object(body);
    let (name, status) = match path_name {
        None => {
            let name = name.ok_or_else(|| ApiError::internal("validated name missing"))?;
            let write = RoleWrite::Create {
                description: description.as_deref().unwrap_or(""),
                permissions: permissions.as_deref().unwrap_or(&[]),
            };
            if !db.write_role(&name, write, &request_id, &detail).await? {
                return Err(ApiError::Conflict {
                    code: "role_exists",
                    message: format!("system role `{name}` already exists"),
                });
            }
            (name, 201)
        }
        Some(n) => {
            let write = RoleWrite::Update { description: description.as_deref(), permissions: permissions.as_deref() };
            if !db.write_role(n, write, &request_id, &detail).await? {
                return Err(role_not_found(n));
            }
            (n.to_owned(), 200)
        }
    };
    let role = db.roles().await?.into_iter().find(|r| r.name == name).ok_or_else(|| role_not_found(&name))?;
    let sync = sync_now(env, &db).await?;
    http::json(status, &json!({ "role": role, "sync": sync }))
}

pub(super) async fn role_delete(env: &Env, name: &str) -> Result<Response, ApiError> {
    let db = edge::control(env)?;
    let request_id = crate::crypto::random_id()?;
    if !db.write_role(name, RoleWrite::Delete, &request_id, &json!({ "name": name })).await? {
        return Err(role_not_found(name));
    }
    let sync = sync_now(env, &db).await?;
    http::json(200, &json!({ "deleted": { "role": name }, "sync": sync }))
}
