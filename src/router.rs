//! The router: from a request's host (and `X-Tenant-ID`) to the control plane or a tenant's API,
//! and from the outcome to a response. It is the one place above both, so it is also where a
//! tenant request that found its binding missing starts the control plane's bindings heal.
//!
//! Layer: below the entry (`lib.rs`), above the control plane and the tenant API.

use worker::{Context, Env, Request, Response};

use crate::core::host::{self, Route};
use crate::edge;
use crate::http::{self, ApiError};

/// Serves one request. Never fails: every error becomes a JSON error response. Every response
/// carries `X-Request-Id` (also recorded in audit logs).
pub async fn handle(req: Request, env: Env, ctx: Context) -> Response {
    let request_id = crate::crypto::request_id();
    // The URL is parsed once here, for routing and for the tenant API (each parse costs µs).
    let url = req.url().map_err(|_| ApiError::not_found("unknown_host", "this host is not served here"));
    let outcome = match url.and_then(|url| Ok((route(&req, &env, &url)?, url))) {
        Ok((Route::ControlPlane, _)) => crate::control::handle(&req, &env).await,
        Ok((Route::Tenant(slug), url)) => {
            let outcome = crate::tenant::handle(&req, url, &env, &ctx, slug, &request_id).await;
            if crate::tenant::heal::due(js_sys::Date::now()) {
                let hosts = crate::tenant::heal::take_hosts();
                ctx.wait_until(crate::control::heal_bindings(env.clone(), hosts));
            }
            outcome
        }
        Err(e) => Err(e),
    };
    let mut response = outcome.unwrap_or_else(|e| http::error_response(&e));
    let _ = response.headers_mut().set("X-Request-Id", &request_id);
    response
}

/// Decides where the request goes, from the URL's host (in Miniflare and on Cloudflare the URL
/// keeps the host the client asked for) and `X-Tenant-ID`.
fn route(req: &Request, env: &Env, url: &worker::Url) -> Result<Route, ApiError> {
    let config = edge::config(env)?;
    let tenant_header = req.headers().get("X-Tenant-ID").map_err(|_| ApiError::BadRequest {
        code: "invalid_tenant_header",
        message: "the X-Tenant-ID header is not valid text".into(),
    })?;
    let host = url.host_str().unwrap_or("");
    host::resolve(host, tenant_header.as_deref(), &config.apex).map_err(|e| match e {
        // `wrangler dev` on its own serves on localhost with wrangler.toml's APEX: say where to go
        // instead of a bare 404.
        host::HostError::UnknownHost if host::is_loopback(host) && !host::is_loopback(config.apex.as_str()) => {
            ApiError::Misdirected {
                code: "not_configured_for_localhost",
                message: format!(
                    "this Worker serves *.{apex} (its APEX var), not {host}. Started with `wrangler dev` on its own? \
                     That runs the Worker without the control plane, tenants or the local cloud. Run `npm run dev` \
                     instead and open http://acme.localhost:8787/api/auth/login (README, \"wrangler dev\").",
                    apex = config.apex.as_str()
                ),
            }
        }
        e => e.into(),
    })
}
