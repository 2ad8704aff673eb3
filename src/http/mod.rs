//! The HTTP edge: turns a Workers request into a route, runs it, and turns the outcome into a
//! JSON response. [`handle`] is the whole request path; `lib.rs` only calls it.

pub mod error;

use serde::Serialize;
use worker::{Env, Request, Response};

pub use error::ApiError;

use crate::core::config::Config;
use crate::core::host::{self, Route};

/// Serves one request. Never fails: every error becomes a JSON error response.
pub async fn handle(req: Request, env: &Env) -> Response {
    let outcome = match route(&req, env).await {
        Ok(route) => match route {
            Route::ControlPlane => crate::control::handle(&req, env).await,
            Route::Tenant(slug) => crate::tenant::handle(&req, env, slug).await,
        },
        Err(e) => Err(e),
    };
    outcome.unwrap_or_else(|e| error_response(&e))
}

/// Decides where the request goes, from the URL's host (in Miniflare and on Cloudflare the URL
/// keeps the host the client asked for) and `X-Tenant-ID`.
async fn route(req: &Request, env: &Env) -> Result<Route, ApiError> {
    let config = config(env)?;
    let url = req.url().map_err(|_| ApiError::not_found("unknown_host", "this host is not served here"))?;
    let tenant_header = req.headers().get("X-Tenant-ID").map_err(|_| ApiError::BadRequest {
        code: "invalid_tenant_header",
        message: "the X-Tenant-ID header is not valid text".into(),
    })?;
    Ok(host::resolve(url.host_str().unwrap_or(""), tenant_header.as_deref(), &config.apex)?)
}

/// The deployment's configuration from its vars; a bad value is our fault, not the client's.
pub fn config(env: &Env) -> Result<Config, ApiError> {
    let var = |name: &str| {
        env.var(name).map(|v| v.to_string()).map_err(|_| ApiError::internal(format!("var {name} is not set")))
    };
    Config::parse(&var("APEX")?, &var("D1_NAME_PREFIX")?).map_err(ApiError::internal)
}

/// A JSON response with `status`.
pub fn json<T: Serialize>(status: u16, body: &T) -> Result<Response, ApiError> {
    Ok(Response::from_json(body)?.with_status(status))
}

/// The response for `err`; internal errors are logged here with their detail.
pub fn error_response(err: &ApiError) -> Response {
    if let ApiError::Internal { detail } = err {
        worker::console_error!("internal error: {detail}");
    }
    let mut response = match Response::from_json(&err.body()) {
        Ok(r) => r.with_status(err.status()),
        Err(_) => return Response::error("internal error", 500).unwrap_or_else(|_| Response::empty().unwrap()),
    };
    for (name, value) in err.headers() {
        // Header names and values here are ASCII literals and numbers; setting them cannot fail.
        let _ = response.headers_mut().set(name, &value);
    }
    response
}

/// The error for a path that exists with other methods.
pub fn method_not_allowed(allow: &'static str) -> ApiError {
    ApiError::MethodNotAllowed { allow }
}

/// The error for a path that does not exist on this host.
pub fn route_not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such route")
}
