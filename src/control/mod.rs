//! The control plane on the apex host: `GET /healthz` (is the control-plane D1 reachable and
//! migrated?), the admin API under `/v1/` (`admin`), the tenant lifecycle (`lifecycle`) and the
//! fleet passes (`fleet`).
//!
//! Layer: below the router, beside the tenant API (neither uses the other). It may use the
//! storage layer (`store`, `edge`), the Cloudflare client, the `http` toolkit and the core.

use serde::Serialize;
use worker::{Env, Request, Response};

use crate::core::migrations::{self, LedgerState};
use crate::http::{self, ApiError, Method};

pub mod admin;
pub mod fleet;
pub mod lifecycle;

use lifecycle::Lifecycle;

pub async fn handle(req: &Request, env: &Env) -> Result<Response, ApiError> {
    match (Method::of(req), req.path().as_str()) {
        (Method::Get, "/healthz") => health(env).await,
        (_, "/healthz") => Err(http::method_not_allowed("GET")),
        (_, path) if path.starts_with("/v1/") => admin::handle(req, env, path).await,
        _ => Err(http::route_not_found()),
    }
}

/// The cron trigger: converge bindings, carry unfinished lifecycle operations on, scan for
/// orphans, migrate a slice of the fleet.
pub async fn scheduled(env: &Env) {
    match Lifecycle::from_env(env) {
        Ok(lifecycle) => match lifecycle.scheduled_pass().await {
            Ok(report) => crate::log::info(&format!("reconciler: {report}")),
            Err(e) => crate::log::error(&format!("reconciler failed: {e}")),
        },
        Err(e) => crate::log::error(&format!("reconciler not configured: {e:?}")),
    }
}

/// Converges the Worker's tenant bindings on the control plane's, after a request found its
/// tenant's binding missing (see `tenant::heal`); logs the outcome.
pub async fn heal_bindings(env: Env, hosts: Vec<String>) {
    let Ok(lifecycle) = Lifecycle::from_env(&env) else {
        return; // from_env logged what is missing
    };
    for host in &hosts {
        // Found missing a binding: checked against its wanted set, whatever its generation says.
        match lifecycle.check_host(host).await {
            Ok(report) => crate::log::info(&format!("host {host} healed: {}", serde_json::json!(report))),
            Err(e) => crate::log::error(&format!("healing host {host} failed: {e}")),
        }
    }
    match lifecycle.reconcile_main().await {
        Ok(Some(report)) => crate::log::info(&format!(
            "bindings healed after a request found one missing: {}",
            serde_json::json!(report)
        )),
        Ok(None) => crate::log::info("bindings heal: another invocation holds the bindings lease"),
        Err(e) => crate::log::error(&format!("bindings heal failed: {e}")),
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
    let applied = match crate::edge::control(env) {
        Ok(store) => crate::store::migrate::applied(store.sql()).await.map_err(|e| e.message),
        Err(e) => Err(format!("{e:?}")),
    };
    let applied = match applied {
        Ok(applied) => applied,
        Err(detail) => {
            crate::log::error(&format!("healthz: control plane unreachable: {detail}"));
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
