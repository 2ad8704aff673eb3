//! `/v1/migrations`, `/v1/maintenance`, `/v1/settings`: fleet-wide operations.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use worker::{Env, Request, Response};

use crate::core::validate;
use crate::edge;
use crate::http::{self, ApiError};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Maintenance {
    pub message: String,
    pub until: Option<String>,
}

pub(super) fn parse_maintenance(value: &Value) -> Result<Maintenance, &'static str> {
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

pub(super) async fn fleet_maintenance_get(env: &Env) -> Result<Response, ApiError> {
    let db = edge::control(env)?;
    let current = db.platform_value("maintenance").await?.and_then(|v| serde_json::from_str::<Value>(&v).ok());
    http::json(200, &json!({ "maintenance": current }))
}

pub(super) async fn fleet_maintenance_set(req: &Request, env: &Env) -> Result<Response, ApiError> {
    let body = Value::Object(http::read_json(req).await?);
    let maintenance = parse_maintenance(&body)
        .map_err(|e| ApiError::invalid_fields([("maintenance".to_owned(), e.to_owned())].into()))?;
    let db = edge::control(env)?;
    let value = serde_json::to_string(&maintenance).map_err(ApiError::internal)?;
    db.set_platform_value("maintenance", Some(&value)).await?;
    db.audit("admin", "fleet.maintenance.start", None, &crate::crypto::random_id()?, &body).await?;
    http::json(200, &json!({ "maintenance": maintenance }))
}

pub(super) async fn fleet_maintenance_clear(env: &Env) -> Result<Response, ApiError> {
    let db = edge::control(env)?;
    db.set_platform_value("maintenance", None).await?;
    db.audit("admin", "fleet.maintenance.end", None, &crate::crypto::random_id()?, &json!({})).await?;
    http::json(200, &json!({ "maintenance": null }))
}

pub(super) async fn settings_get(env: &Env) -> Result<Response, ApiError> {
    let defaults = edge::control(env)?.settings_defaults().await?;
    http::json(200, &json!({ "settings": defaults }))
}

pub(super) async fn settings_patch(req: &Request, env: &Env) -> Result<Response, ApiError> {
    let body = http::read_json(req).await?;
    let changes = validate::settings_patch(&body).map_err(ApiError::invalid_fields)?;
    let db = edge::control(env)?;
    db.set_settings_defaults(&changes).await?;
    db.audit("admin", "settings.update", None, &crate::crypto::random_id()?, &Value::Object(body)).await?;
    http::json(200, &json!({ "settings": db.settings_defaults().await? }))
}

pub(super) async fn migrations_apply(req: &Request, env: &Env) -> Result<Response, ApiError> {
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
    let configured = edge::config(env)?.migration_concurrency;
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
    let db = edge::control(env)?;
    let report =
        crate::control::fleet::migrate_pass(&db, &edge::EnvBindings(env.clone()), &after, limit, concurrency).await?;
    let request_id = crate::crypto::random_id()?;
    db.audit(
        "admin",
        "migrations.apply",
        None,
        &request_id,
        &json!({ "processed": report.processed, "failed": report.failed.len() }),
    )
    .await?;
    http::json(200, &report)
}
