//! `/api/settings`: the tenant's effective settings, the control plane's defaults overlaid with
//! the tenant's own overrides, each with where its value comes from. Removing an override
//! (`null`) falls back to the default.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use wasm_bindgen::JsValue;
use worker::{Request, Response};

use super::TenantContext;
use crate::core::validate;
use crate::http::{self, ApiError};

#[derive(Deserialize)]
struct Row {
    key: String,
    value: String,
}

async fn effective(ctx: &TenantContext) -> Result<Value, ApiError> {
    let defaults = ctx.platform().settings_defaults().await?;
    let overrides: Vec<Row> =
        ctx.db().prepare("SELECT key, value FROM settings ORDER BY key").all().await?.results()?;
    let mut out: Map<String, Value> =
        defaults.into_iter().map(|(k, v)| (k, json!({ "value": v, "source": "default" }))).collect();
    for row in overrides {
        let value: Value = serde_json::from_str(&row.value).unwrap_or(Value::Null);
        out.insert(row.key, json!({ "value": value, "source": "tenant" }));
    }
    Ok(Value::Object(out))
}

/// `GET /api/settings`
pub async fn get(ctx: &TenantContext) -> Result<Response, ApiError> {
    http::json(200, &json!({ "settings": effective(ctx).await? }))
}

/// `PATCH /api/settings` (admins): `{key: value}` sets an override, `{key: null}` removes it.
pub async fn update(ctx: &TenantContext, req: &Request) -> Result<Response, ApiError> {
    ctx.require_admin()?;
    let body = http::read_json(req).await?;
    let changes = validate::settings_patch(&body).map_err(ApiError::invalid_fields)?;
    let db = ctx.db();
    let mut batch = Vec::new();
    for (key, value) in &changes {
        batch.push(match value {
            Some(v) => db
                .prepare(
                    "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                     updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                )
                .bind(&[JsValue::from_str(key), JsValue::from_str(v)])?,
            None => db.prepare("DELETE FROM settings WHERE key = ?1").bind(&[JsValue::from_str(key)])?,
        });
    }
    batch.push(ctx.audit("settings.update", "settings", &Value::Object(body))?);
    db.batch(batch).await?;
    http::json(200, &json!({ "settings": effective(ctx).await? }))
}
