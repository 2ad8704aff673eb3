//! The control plane's HTTP surface on the apex host: `GET /healthz` (is the control-plane D1
//! reachable and migrated?) and the admin API under `/v1/` (see `admin`).

use serde::Serialize;
use worker::{Env, Request, Response};

use crate::core::migrations::{self, LedgerState};
use crate::http::{self, ApiError, Method};

pub mod admin;
pub mod fleet;
pub mod lifecycle;
pub mod store;

/// The binding of the control-plane database.
pub const CONTROL_BINDING: &str = "CONTROL_DB";

pub async fn handle(req: &Request, env: &Env) -> Result<Response, ApiError> {
    match (Method::of(req), req.path().as_str()) {
        (Method::Get, "/healthz") => health(env).await,
        (_, "/healthz") => Err(http::method_not_allowed("GET")),
        (_, path) if path.starts_with("/v1/") => admin::handle(req, env, path).await,
        _ => Err(http::route_not_found()),
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    control_plane: ControlPlaneHealth,
}

#[derive(Serialize)]
struct ControlPlaneHealth {
    reachable: bool,
    migrated: bool,
    applied: Vec<String>,
    pending: Vec<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unknown: Vec<String>,
}

async fn health(env: &Env) -> Result<Response, ApiError> {
    let applied = match applied_migrations(env).await {
        Ok(applied) => applied,
        Err(detail) => {
            worker::console_error!("healthz: control plane unreachable: {detail}");
            let body = Health {
                status: "unavailable",
                control_plane: ControlPlaneHealth {
                    reachable: false,
                    migrated: false,
                    applied: vec![],
                    pending: vec![],
                    unknown: vec![],
                },
            };
            return http::json(503, &body);
        }
    };
    let (migrated, pending, unknown) = match migrations::compare(migrations::CONTROL, &applied) {
        LedgerState::Current => (true, vec![], vec![]),
        LedgerState::Behind { pending } => (false, pending, vec![]),
        LedgerState::Diverged { unknown } => (false, vec![], unknown),
    };
    let body = Health {
        status: if migrated { "ok" } else { "unavailable" },
        control_plane: ControlPlaneHealth { reachable: true, migrated, applied, pending, unknown },
    };
    http::json(if migrated { 200 } else { 503 }, &body)
}

#[derive(serde::Deserialize)]
struct Name {
    name: String,
}

/// The control plane's migration ledger; an empty list when the ledger table does not exist yet.
async fn applied_migrations(env: &Env) -> Result<Vec<String>, String> {
    let db = env.d1(CONTROL_BINDING).map_err(|e| e.to_string())?;
    let ledger =
        format!("SELECT name FROM sqlite_master WHERE type = 'table' AND name = '{}'", migrations::LEDGER_TABLE);
    let exists =
        db.prepare(&ledger).all().await.map_err(|e| e.to_string())?.results::<Name>().map_err(|e| e.to_string())?;
    if exists.is_empty() {
        return Ok(vec![]);
    }
    let rows = db
        .prepare(format!("SELECT name FROM {} ORDER BY id", migrations::LEDGER_TABLE))
        .all()
        .await
        .map_err(|e| e.to_string())?
        .results::<Name>()
        .map_err(|e| e.to_string())?;
    Ok(rows.into_iter().map(|r| r.name).collect())
}
