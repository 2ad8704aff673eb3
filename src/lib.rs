//! tenantry: one Cloudflare Worker serving many tenants, each with its own D1 database.
//!
//! The tree, by layer (each uses only what sits below it):
//! - entry: this file: the `fetch` and `scheduled` events.
//! - `router`: host → the control plane or a tenant's API; the response.
//! - `control` (health, the admin API, the lifecycle sagas, fleet passes) and `tenant` (the
//!   tenant API), side by side, neither using the other.
//! - the storage layer: `store` (SQL as data; the control store, the tenant directory, tenant
//!   databases, the one migration runner; the lifecycle's ports) and `edge` (what `Env`
//!   provides: the configuration root, D1, R2, the clock); beside it the `http` toolkit (the
//!   error type, JSON, body reading), the `cloudflare` REST client, `crypto` (WebCrypto) and `log`.
//! - `core`: the Workers-free tenancy core (slugs, hosts, names, config, state machines, tokens).
//! - `fake` (native only): in-memory stand-ins for native tests and `examples/simulate.rs`.

pub mod cloudflare;
pub mod control;
pub mod core;
pub mod crypto;
pub mod edge;
#[cfg(not(target_arch = "wasm32"))]
pub mod fake;
pub mod http;
pub mod log;
pub mod router;
pub mod store;
pub mod tenant;

use worker::{event, Context, Env, Request, Response, Result, ScheduleContext, ScheduledEvent};

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
    Ok(router::handle(req, env, ctx).await)
}

/// The cron trigger: the control plane's scheduled reconciler.
#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    control::scheduled(&env).await
}
