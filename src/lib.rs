//! tenantry: one Cloudflare Worker serving many tenants, each with its own D1 database.
//!
//! The tree, by layer:
//! - `core`: the Workers-free tenancy core (slugs, hosts, names, config, migrations).
//! - `http`: the edge: routing a request, the one error type, JSON responses.
//! - `control`: the control plane on the apex host.
//! - `tenant`: the tenant API on `{slug}.{APEX}`.
//!
//! This file only holds the entry points.

pub mod cloudflare;
pub mod control;
pub mod core;
pub mod http;
pub mod tenant;

use worker::{event, Context, Env, Request, Response, Result};

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    Ok(http::handle(req, &env).await)
}
