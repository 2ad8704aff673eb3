//! Backups and restores: `/v1/tenants/{slug}/backups` (list, take one now),
//! `/v1/tenants/{slug}/restore` (point in time, from a backup, undelete), its confirmation, and
//! `/v1/backups/run` (a pass of the scheduled fan-out, on demand).

use serde_json::{json, Map, Value};
use worker::{Env, Request, Response};

use super::not_found;
use super::tenants::{standing, Settled};
use crate::control::lifecycle::{Lifecycle, RestoreInput};
use crate::core::lifecycle::{OperationKind, TenantStatus};
use crate::core::names::DatabaseName;
use crate::core::slug::TenantSlug;
use crate::http::{self, ApiError};
use crate::store::control::{BackupRow, RestoreStart};
use crate::store::directory;

/// The public view of a backup.
pub fn backup_view(b: &BackupRow) -> Value {
    json!({
        "id": b.id,
        "kind": b.kind,
        "key": b.object_key,
        "database_id": b.database_id,
        "schema_version": b.schema_version,
        "bytes": b.bytes,
        "sha256": b.sha256,
        "rows": serde_json::from_str::<Value>(&b.row_counts).unwrap_or_default(),
        "taken_at": iso(b.taken_at),
        "verified_at": iso(b.verified_at),
    })
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// `GET /v1/tenants/{slug}/backups`: every backup kept, newest first, the last scheduled
/// attempt, and the spare databases restores hold.
pub(super) async fn list(env: &Env, slug: &TenantSlug) -> Result<Response, ApiError> {
    let db = crate::edge::control(env)?;
    let tenant = db.tenant(slug.as_str()).await?.ok_or_else(|| not_found(slug.as_str()))?;
    let backups = db.backups_of(slug.as_str(), None).await?;
    let spares = db.spares_of(slug.as_str()).await?;
    http::json(
        200,
        &json!({
            "backups": backups.iter().map(backup_view).collect::<Vec<_>>(),
            "scheduled": {
                "last_backup_at": tenant.backed_up_at.map(iso),
                "last_attempt_at": tenant.backup_tried_at.map(iso),
                "last_error": tenant.backup_error,
            },
            "spare_databases": spares.iter().map(|s| json!({
                "name": s.name, "id": s.database_id, "role": s.role, "operation": s.operation_id,
                "drop_after": s.drop_after.map(iso),
            })).collect::<Vec<_>>(),
        }),
    )
}

/// `GET /v1/tenants/{slug}/backups/{id}`: the backup's SQL, streamed from R2, with the SHA-256 it
/// was verified with (`X-Backup-Sha256`, for the client to check).
pub(super) async fn download(env: &Env, slug: &TenantSlug, id: &str) -> Result<Response, ApiError> {
    let missing = || ApiError::not_found("backup_not_found", format!("tenant `{slug}` has no backup {id:.40}"));
    let id: i64 = id.parse().map_err(|_| missing())?;
    let db = crate::edge::control(env)?;
    db.tenant(slug.as_str()).await?.ok_or_else(|| not_found(slug.as_str()))?;
    let row = db.backup_of(slug.as_str(), id).await?.ok_or_else(missing)?;
    let response =
        crate::edge::R2Backups::from_env(env).object_response(&row.object_key).await.map_err(ApiError::internal)?;
    let mut response =
        response.ok_or_else(|| ApiError::internal(format!("backup object {} is missing", row.object_key)))?;
    let headers = response.headers_mut();
    headers.set("Content-Type", "application/sql")?;
    headers.set("Content-Disposition", &format!("attachment; filename=\"{slug}-{id}.sql\""))?;
    headers.set("X-Backup-Sha256", &row.sha256)?;
    Ok(response)
}

/// `POST /v1/tenants/{slug}/backups`: a backup now (kind `manual`, not pruned by the schedule).
pub(super) async fn take(env: &Env, slug: &TenantSlug) -> Result<Response, ApiError> {
    let lc = Lifecycle::from_env(env)?;
    let tenant = lc.store.tenant(slug.as_str()).await?.ok_or_else(|| not_found(slug.as_str()))?;
    if !matches!(tenant.status, TenantStatus::Active | TenantStatus::Suspended) || tenant.restoring.is_some() {
        return Err(ApiError::Conflict {
            code: "not_backupable",
            message: format!("tenant `{slug}` is {}; only a tenant in service can be backed up", describe(&tenant)),
        });
    }
    let id = tenant.database_id.as_deref().ok_or_else(ApiError::tenant_unavailable)?;
    match lc.take_backup(&tenant, id, "manual").await? {
        Ok(done) => {
            let rows = lc.store.backups_of(slug.as_str(), Some("manual")).await?;
            let row = rows.iter().find(|b| b.object_key == done.key);
            http::json(201, &json!({ "backup": row.map(backup_view) }))
        }
        Err(reason) => Err(ApiError::Unavailable { code: "backup_unavailable", message: reason, retry_after: 10 }),
    }
}

fn describe(t: &crate::store::control::TenantRow) -> String {
    if t.restoring.is_some() {
        "restoring".into()
    } else {
        t.status.to_string()
    }
}

/// `POST /v1/tenants/{slug}/restore`:
/// - `{"at": "<RFC 3339>"}`: point in time, through Time Travel, in place;
/// - `{"backup": <id>}`: from one of the tenant's backups, into a new database;
/// - on a deleted tenant, `{}` or `{"backup": <id>}`: undelete from its newest backup (or that one).
///
/// Answers 202 with the operation (or 200 once it finished within the request).
pub(super) async fn restore(req: &Request, env: &Env, slug: &TenantSlug) -> Result<Response, ApiError> {
    let body = http::read_json(req).await?;
    let lc = Lifecycle::from_env(env)?;
    let s = slug.as_str();
    let tenant = lc.store.tenant(s).await?.ok_or_else(|| not_found(s))?;
    let (at, backup) = parse_restore(&body, tenant.status == TenantStatus::Deleted)?;
    let now = lc.now_ms();
    let op_id = crate::crypto::random_id()?;
    let backup_row =
        match backup {
            Some(id) => Some(lc.store.backup_of(s, id).await?.ok_or_else(|| {
                ApiError::not_found("backup_not_found", format!("tenant `{slug}` has no backup {id}"))
            })?),
            None if tenant.status == TenantStatus::Deleted => {
                Some(lc.store.backups_of(s, None).await?.into_iter().next().ok_or_else(|| {
                    ApiError::not_found("backup_not_found", format!("deleted tenant `{slug}` has no backup to restore"))
                })?)
            }
            None => None,
        };
    // A new database's name: the tenant's prefix and slug, then `_r` and a time (slugs hold no `_`,
    // so it can never be another tenant's name).
    let new_name = || {
        DatabaseName::for_tenant(&lc.settings.prefix, slug).as_str().to_owned() + &format!("_r{}", radix36(now as u64))
    };
    let (kind, start, input) = match (&at, &backup_row) {
        (Some(at), None) => {
            (OperationKind::RestorePointInTime, None, RestoreInput { at: Some(at.clone()), ..Default::default() })
        }
        (None, Some(b)) => {
            let name = new_name();
            let kind = if tenant.status == TenantStatus::Deleted {
                OperationKind::Undelete
            } else {
                OperationKind::RestoreBackup
            };
            (
                kind,
                Some(name.clone()),
                RestoreInput { backup_id: Some(b.id), database_name: Some(name), ..Default::default() },
            )
        }
        _ => unreachable!("parse_restore gives exactly one of at and backup"),
    };
    let start = match (kind, &start) {
        (OperationKind::Undelete, Some(name)) => RestoreStart::Undelete { database_name: name },
        (_, spare) => RestoreStart::InPlace { spare: spare.as_deref() },
    };
    let input_text = serde_json::to_string(&input).map_err(ApiError::internal)?;
    let detail = json!({ "at": at, "backup": backup_row.as_ref().map(|b| b.id) });
    if !lc.store.start_restore(s, &op_id, kind, start, &input_text, now as i64, &detail).await? {
        let tenant = lc.store.tenant(s).await?.ok_or_else(|| not_found(s))?;
        return Err(ApiError::Conflict {
            code: "restore_not_possible",
            message: format!(
                "tenant `{slug}` is {} and cannot be restored now (a restore needs a tenant in service with no \
                 operation running, or a deleted one)",
                describe(&tenant)
            ),
        });
    }
    directory::forget(slug);
    if let Some(op) = lc.store.operation(&op_id).await? {
        super::tenants::run_logged(&lc, &op).await?;
    }
    standing(&lc, s, Settled::OperationClosed, 200).await
}

/// `{"at"}` or `{"backup"}` (on a deleted tenant, also `{}`), nothing else.
fn parse_restore(body: &Map<String, Value>, deleted: bool) -> Result<(Option<String>, Option<i64>), ApiError> {
    let mut errors = std::collections::BTreeMap::new();
    let (mut at, mut backup) = (None, None);
    for (key, value) in body {
        match (key.as_str(), value) {
            ("at", Value::String(t)) => match chrono::DateTime::parse_from_rfc3339(t) {
                Ok(parsed) => at = Some(parsed.to_utc().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                Err(_) => {
                    errors.insert("at".to_owned(), "must be an RFC 3339 time, e.g. 2026-11-23T14:00:00Z".to_owned());
                }
            },
            ("backup", Value::Number(n)) if n.as_i64().is_some_and(|i| i > 0) => backup = n.as_i64(),
            ("at" | "backup", _) => {
                errors.insert(key.clone(), "has the wrong type".to_owned());
            }
            _ => {
                errors.insert(key.clone(), "is not a field of a restore".to_owned());
            }
        }
    }
    if at.is_some() && backup.is_some() {
        errors.insert("at".to_owned(), "give either `at` or `backup`, not both".to_owned());
    }
    if deleted && at.is_some() {
        errors.insert("at".to_owned(), "a deleted tenant is restored from a backup, not to a point in time".to_owned());
    }
    if !deleted && at.is_none() && backup.is_none() && errors.is_empty() {
        errors.insert("at".to_owned(), "give `at` (a point in time) or `backup` (a backup id)".to_owned());
    }
    if errors.is_empty() {
        Ok((at, backup))
    } else {
        Err(ApiError::invalid_fields(errors))
    }
}

fn radix36(mut n: u64) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// `POST /v1/tenants/{slug}/restore/confirm`: the databases the tenant's restores replaced may
/// be dropped now (the next reconciler pass drops them) instead of after `RESTORE_KEEP_HOURS`.
pub(super) async fn confirm(env: &Env, slug: &TenantSlug) -> Result<Response, ApiError> {
    let lc = Lifecycle::from_env(env)?;
    lc.store.tenant(slug.as_str()).await?.ok_or_else(|| not_found(slug.as_str()))?;
    let n = lc.store.confirm_restores(slug.as_str(), &crate::crypto::random_id()?).await?;
    let dropped = lc.drop_spares().await?;
    http::json(200, &json!({ "confirmed": n, "dropped": dropped }))
}

/// `POST /v1/backups/run {limit?, concurrency?, max_age_seconds? | before?, slugs?}`: one pass of
/// the scheduled backups now, of the tenants due: last backed up more than `max_age_seconds` ago
/// (the configured interval unless given), or before the time `before` (a run of several passes
/// gives its start, so it ends); `slugs`: of these only. Call again while `remaining > 0`
/// (`npm run backup` does).
pub(super) async fn run(req: &Request, env: &Env) -> Result<Response, ApiError> {
    let body = http::read_json(req).await?;
    let lc = Lifecycle::from_env(env)?;
    let mut errors = std::collections::BTreeMap::new();
    let mut number = |name: &str, max: u64| match body.get(name) {
        None => None,
        Some(v) => match v.as_u64().filter(|n| *n <= max) {
            Some(n) => Some(n),
            None => {
                errors.insert(name.to_owned(), format!("must be a whole number from 0 to {max}"));
                None
            }
        },
    };
    let limit = number("limit", 200).unwrap_or(25).max(1) as u32;
    let concurrency = number("concurrency", 16).map_or(lc.settings.backups.concurrency, |n| n.max(1) as usize);
    let max_age = number("max_age_seconds", 10 * 365 * 86_400).map(|s| s as i64 * 1000);
    let before = match body.get("before") {
        None => None,
        Some(v) => match v.as_str().map(chrono::DateTime::parse_from_rfc3339) {
            Some(Ok(at)) => Some(at.timestamp_millis()),
            _ => {
                errors.insert("before".to_owned(), "must be an RFC 3339 time".to_owned());
                None
            }
        },
    };
    if max_age.is_some() && before.is_some() {
        errors.insert("before".to_owned(), "give `before` or `max_age_seconds`, not both".to_owned());
    }
    let now = lc.now_ms() as i64;
    let due_before = before.unwrap_or_else(|| now - max_age.unwrap_or(lc.settings.backups.interval_ms));
    let only = match body.get("slugs") {
        None => None,
        Some(Value::Array(items)) if items.len() <= 200 => {
            let slugs: Vec<String> = items
                .iter()
                .filter_map(|v| v.as_str().and_then(|s| TenantSlug::parse(s).ok()).map(|s| s.as_str().to_owned()))
                .collect();
            if slugs.len() != items.len() {
                errors.insert("slugs".to_owned(), "must all be tenant slugs".to_owned());
            }
            Some(slugs)
        }
        Some(_) => {
            errors.insert("slugs".to_owned(), "must be a list of at most 200 tenant slugs".to_owned());
            None
        }
    };
    let fields = ["limit", "concurrency", "max_age_seconds", "before", "slugs"];
    if let Some(key) = body.keys().find(|k| !fields.contains(&k.as_str())) {
        errors.insert(key.clone(), "is not a field of a backup run".to_owned());
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid_fields(errors));
    }
    let pass = lc.backup_pass(limit, concurrency, due_before, only.as_deref()).await?;
    http::json(200, &json!(pass))
}
