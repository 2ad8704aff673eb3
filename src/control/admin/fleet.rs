//! `/v1/migrations`, `/v1/maintenance`, `/v1/settings`: fleet-wide operations.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use worker::{Env, Request, Response};

use crate::control::store;
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
    let db = env.d1(crate::control::CONTROL_BINDING)?;
    let current = store::platform_value(&db, "maintenance").await?.and_then(|v| serde_json::from_str::<Value>(&v).ok());
    http::json(200, &json!({ "maintenance": current }))
}

pub(super) async fn fleet_maintenance_set(req: &Request, env: &Env) -> Result<Response, ApiError> {
    let body = Value::Object(http::read_json(req).await?);
    let maintenance = parse_maintenance(&body)
        .map_err(|e| ApiError::invalid_fields([("maintenance".to_owned(), e.to_owned())].into()))?;
    let db = env.d1(crate::control::CONTROL_BINDING)?;
    let value = serde_json::to_string(&maintenance).map_err(ApiError::internal)?;
    store::set_platform_value(&db, "maintenance", Some(&value)).await?;
    store::audit(&db, "admin", "fleet.maintenance.start", None, &crate::crypto::random_id()?, &body).await?;
    http::json(200, &json!({ "maintenance": maintenance }))
}

pub(super) async fn fleet_maintenance_clear(env: &Env) -> Result<Response, ApiError> {
    let db = env.d1(crate::control::CONTROL_BINDING)?;
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

pub(super) async fn settings_get(env: &Env) -> Result<Response, ApiError> {
    let db = env.d1(crate::control::CONTROL_BINDING)?;
    let defaults = store::settings_defaults(&db).await?;
    http::json(200, &json!({ "settings": defaults }))
}

pub(super) async fn settings_patch(req: &Request, env: &Env) -> Result<Response, ApiError> {
    let body = http::read_json(req).await?;
    let changes = validate_settings_patch(&body)?;
    let db = env.d1(crate::control::CONTROL_BINDING)?;
    store::set_settings_defaults(&db, &changes).await?;
    store::audit(&db, "admin", "settings.update", None, &crate::crypto::random_id()?, &Value::Object(body)).await?;
    http::json(200, &json!({ "settings": store::settings_defaults(&db).await? }))
}

/// Default tenants migrated at once; the `MIGRATION_CONCURRENCY` var overrides it.
pub(super) const DEFAULT_CONCURRENCY: usize = 8;

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
    let db = env.d1(crate::control::CONTROL_BINDING)?;
    let report = crate::control::fleet::migrate_pass(env, &db, &after, limit, concurrency).await?;
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
