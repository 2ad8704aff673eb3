//! The HTTP toolkit every handler uses: the one error type ([`ApiError`]), JSON responses, body
//! and paging parameters, the method. It dispatches nothing (the router does) and may use only
//! the core and the storage layer's error type.

pub mod error;
mod method;

use serde::Serialize;
use worker::{Request, Response};

pub use error::ApiError;
pub use method::Method;

/// A JSON response with `status`.
pub fn json<T: Serialize>(status: u16, body: &T) -> Result<Response, ApiError> {
    Ok(Response::from_json(body)?.with_status(status))
}

/// The response for `err`; internal errors are logged here with their detail.
pub fn error_response(err: &ApiError) -> Response {
    if let ApiError::Internal { detail } = err {
        crate::log::error(&format!("internal error: {detail}"));
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

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 64 * 1024;

/// The request body as a JSON object: 413 past [`MAX_BODY`], 400 when not a JSON object.
pub async fn read_json(req: &Request) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    let unreadable =
        || ApiError::BadRequest { code: "invalid_body", message: "the request body could not be read".into() };
    let bytes = req.clone().map_err(|_| unreadable())?.bytes().await.map_err(|_| unreadable())?;
    if bytes.len() > MAX_BODY {
        return Err(ApiError::PayloadTooLarge { limit: MAX_BODY });
    }
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => {
            Err(ApiError::BadRequest { code: "invalid_json", message: "the request body must be a JSON object".into() })
        }
        Err(e) => Err(ApiError::BadRequest {
            code: "invalid_json",
            message: format!("the request body is not valid JSON: {e}"),
        }),
    }
}

/// `limit` (1..=max, default `default`) and `cursor` (a positive id) query parameters.
pub fn page_params(req: &Request, default: u32, max: u32) -> Result<(u32, Option<i64>), ApiError> {
    page_params_in(&req.url()?, default, max)
}

/// [`page_params`] of a URL already parsed.
pub fn page_params_in(url: &worker::Url, default: u32, max: u32) -> Result<(u32, Option<i64>), ApiError> {
    let bad = |message: String| ApiError::BadRequest { code: "invalid_parameter", message };
    let mut limit = default;
    let mut cursor = None;
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "limit" => {
                limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| bad(format!("limit must be a whole number from 1 to {max}")))?
            }
            "cursor" => {
                cursor = Some(
                    value
                        .parse::<i64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad("cursor is not a cursor this API gave".into()))?,
                )
            }
            _ => {}
        }
    }
    Ok((limit, cursor))
}

/// Splits `rows` (fetched with `LIMIT limit + 1`) into the page and the cursor of the next page,
/// the key of the page's last row when there is more.
pub fn split_page<T, K>(mut rows: Vec<T>, limit: u32, key: impl Fn(&T) -> K) -> (Vec<T>, Option<K>) {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = if more { rows.last().map(key) } else { None };
    (rows, next)
}

/// The error for a path that exists with other methods.
pub fn method_not_allowed(allow: &'static str) -> ApiError {
    ApiError::MethodNotAllowed { allow }
}

/// The error for a path that does not exist on this host.
pub fn route_not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such route")
}
