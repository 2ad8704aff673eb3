//! tenantry: one Cloudflare Worker serving many tenants, each with its own D1 database.
//!
//! The tree, by layer:
//! - `core`: the Workers-free tenancy core (slugs, hosts, names, config, migrations).
//! - `http`: the edge: routing a request, the one error type, JSON responses.
//! - `control`: the control plane on the apex host: health, the admin API, the tenant lifecycle.
//! - `cloudflare`: the Cloudflare REST API client.
//! - `crypto`: WebCrypto at the edge (random ids, password hashing).
//! - `tenant`: the tenant API on `{slug}.{APEX}`.
//!
//! This file only holds the entry points.

pub mod cloudflare;
pub mod control;
pub mod core;
pub mod crypto;
#[cfg(not(target_arch = "wasm32"))]
pub mod fake;
pub mod http;
pub mod store;
pub mod tenant;

use worker::{event, Context, Env, Request, Response, Result, ScheduleContext, ScheduledEvent};

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
    Ok(http::handle(req, &env, &ctx).await)
}

/// The cron trigger: converge bindings, carry unfinished lifecycle operations on, scan for orphans.
#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    match control::lifecycle::Lifecycle::from_env(&env) {
        Ok(lifecycle) => match lifecycle.reconcile_all().await {
            Ok(report) => worker::console_log!("reconciler: {report}"),
            Err(e) => worker::console_error!("reconciler failed: {e}"),
        },
        Err(e) => worker::console_error!("reconciler not configured: {e}"),
    }
}
