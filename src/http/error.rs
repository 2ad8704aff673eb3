//! The one error type of the HTTP edge: every failure a handler can meet becomes an [`ApiError`],
//! which decides the status and a body that is safe to show to any client.
//!
//! Body: `{"error": {"code": "stable_snake_case", "message": "human readable"}}`. Internal errors
//! are logged with their detail and answered with a generic message.

use serde_json::json;

use crate::core::host::HostError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// Missing or wrong credentials.
    #[error("{message}")]
    Unauthorized { message: String },
    /// Authenticated but not allowed (another tenant's token, a member on an admin route, a
    /// suspended tenant, a plan limit).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// The request was sent to a host this deployment does not serve, in a way that says the
    /// Worker was started somewhere it was not configured for (421 Misdirected Request).
    #[error("{message}")]
    Misdirected { code: &'static str, message: String },
    /// The request conflicts with the resource's state (a taken slug, an impossible transition).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// Well-formed but invalid values; `fields` names each bad field and why.
    #[error("{message}")]
    Unprocessable { message: String, fields: std::collections::BTreeMap<String, String> },
    #[error("method not allowed")]
    MethodNotAllowed { allow: &'static str },
    /// Too many attempts; retry after `retry_after` seconds.
    #[error("{message}")]
    TooManyRequests { code: &'static str, message: String, retry_after: u32 },
    /// A rate limit of the tenant's plan was reached (`limit` names it: `core::plans::RateLimit`);
    /// retry after `period` seconds at the latest.
    #[error("rate limit {limit} reached: {allowed} requests per {period} s; retry after {period} s")]
    RateLimited { limit: &'static str, allowed: u32, period: u32 },
    /// The tenant's plan has ended or a quota is used up (402): writes wait for the operator.
    #[error("{message}")]
    PaymentRequired { code: &'static str, message: String, detail: serde_json::Value },
    /// Temporarily unable to serve; the client should retry after `retry_after` seconds.
    #[error("{message}")]
    Unavailable { code: &'static str, message: String, retry_after: u32 },
    /// A fault on our side. `detail` is logged, never sent.
    #[error("internal error: {detail}")]
    Internal { detail: String },
}

impl ApiError {
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::NotFound { code, message: message.into() }
    }

    /// 422 with the bad fields and why each is bad.
    pub fn invalid_fields(fields: std::collections::BTreeMap<String, String>) -> Self {
        Self::Unprocessable { message: "the request has invalid fields".into(), fields }
    }

    /// A tenant's database cannot be reached right now (503, retry in 5 s).
    pub fn tenant_unavailable() -> Self {
        Self::Unavailable {
            code: "tenant_unavailable",
            message: "this tenant is temporarily unavailable; retry shortly".into(),
            retry_after: 5,
        }
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::Internal { detail: detail.to_string() }
    }

    /// Logs `detail` (server side only) and returns the error unchanged.
    pub fn inspect_log(self, detail: &str) -> Self {
        crate::log::error(&format!("{}: {detail}", self.code()));
        self
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest { .. } => 400,
            Self::Unauthorized { .. } => 401,
            Self::Forbidden { .. } => 403,
            Self::NotFound { .. } => 404,
            Self::Misdirected { .. } => 421,
            Self::Conflict { .. } => 409,
            Self::PayloadTooLarge { .. } => 413,
            Self::Unprocessable { .. } => 422,
            Self::TooManyRequests { .. } | Self::RateLimited { .. } => 429,
            Self::PaymentRequired { .. } => 402,
            Self::MethodNotAllowed { .. } => 405,
            Self::Unavailable { .. } => 503,
            Self::Internal { .. } => 500,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::NotFound { code, .. }
            | Self::Misdirected { code, .. }
            | Self::Conflict { code, .. }
            | Self::Forbidden { code, .. }
            | Self::TooManyRequests { code, .. }
            | Self::PaymentRequired { code, .. }
            | Self::Unavailable { code, .. } => code,
            Self::RateLimited { .. } => "rate_limited",
            Self::Unauthorized { .. } => "unauthorized",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::Unprocessable { .. } => "validation_failed",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Internal { .. } => "internal_error",
        }
    }

    /// The JSON body sent to the client.
    pub fn body(&self) -> serde_json::Value {
        let message = match self {
            Self::Internal { .. } => "an internal error occurred; it has been logged".to_owned(),
            other => other.to_string(),
        };
        match self {
            Self::Unprocessable { fields, .. } => {
                json!({ "error": { "code": self.code(), "message": message, "fields": fields } })
            }
            Self::RateLimited { limit, allowed, period } => json!({ "error": {
                "code": self.code(), "message": message, "limit": limit, "allowed": allowed, "period_seconds": period,
            } }),
            Self::PaymentRequired { detail, .. } => {
                json!({ "error": { "code": self.code(), "message": message, "detail": detail } })
            }
            _ => json!({ "error": { "code": self.code(), "message": message } }),
        }
    }

    /// Extra response headers this error carries.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Unavailable { retry_after, .. } | Self::TooManyRequests { retry_after, .. } => {
                vec![("Retry-After", retry_after.to_string())]
            }
            Self::RateLimited { period, .. } => vec![("Retry-After", period.to_string())],
            Self::MethodNotAllowed { allow } => vec![("Allow", (*allow).to_owned())],
            Self::Unauthorized { .. } => vec![("WWW-Authenticate", "Bearer".to_owned())],
            _ => Vec::new(),
        }
    }
}

impl From<HostError> for ApiError {
    fn from(e: HostError) -> Self {
        let code = match e {
            HostError::UnknownHost => return Self::not_found("unknown_host", e.to_string()),
            HostError::InvalidSubdomain(_) => "invalid_tenant_host",
            HostError::InvalidHeader(_) => "invalid_tenant_header",
            HostError::Conflict => "tenant_conflict",
        };
        Self::BadRequest { code, message: e.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::slug::SlugError;

    #[test]
    fn every_variant_has_its_status_code_and_headers() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::BadRequest { code: "bad", message: "m".into() }, 400, "bad"),
            (ApiError::not_found("nope", "m"), 404, "nope"),
            (ApiError::Unauthorized { message: "m".into() }, 401, "unauthorized"),
            (ApiError::Conflict { code: "taken", message: "m".into() }, 409, "taken"),
            (ApiError::Forbidden { code: "no", message: "m".into() }, 403, "no"),
            (ApiError::TooManyRequests { code: "slow", message: "m".into(), retry_after: 3 }, 429, "slow"),
            (ApiError::PayloadTooLarge { limit: 10 }, 413, "payload_too_large"),
            (ApiError::RateLimited { limit: "tenant_requests", allowed: 5, period: 60 }, 429, "rate_limited"),
            (
                ApiError::PaymentRequired { code: "plan_expired", message: "m".into(), detail: json!({}) },
                402,
                "plan_expired",
            ),
            (
                ApiError::Unprocessable { message: "m".into(), fields: [("slug".to_owned(), "bad".to_owned())].into() },
                422,
                "validation_failed",
            ),
            (ApiError::MethodNotAllowed { allow: "GET" }, 405, "method_not_allowed"),
            (ApiError::Unavailable { code: "later", message: "m".into(), retry_after: 7 }, 503, "later"),
            (ApiError::internal("secret detail"), 500, "internal_error"),
            (HostError::UnknownHost.into(), 404, "unknown_host"),
            (HostError::InvalidSubdomain(SlugError::Length).into(), 400, "invalid_tenant_host"),
            (HostError::InvalidHeader(SlugError::Reserved).into(), 400, "invalid_tenant_header"),
            (HostError::Conflict.into(), 400, "tenant_conflict"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status(), status, "{err:?}");
            assert_eq!(err.body()["error"]["code"], code, "{err:?}");
            assert!(err.body()["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        let invalid =
            ApiError::Unprocessable { message: "m".into(), fields: [("slug".to_owned(), "bad".to_owned())].into() };
        assert_eq!(invalid.body()["error"]["fields"]["slug"], "bad");
        assert_eq!(
            ApiError::Unauthorized { message: "m".into() }.headers(),
            vec![("WWW-Authenticate", "Bearer".to_owned())]
        );
        let limited = ApiError::RateLimited { limit: "user_writes", allowed: 5, period: 10 };
        assert_eq!(limited.headers(), vec![("Retry-After", "10".to_owned())]);
        assert_eq!(
            (limited.body()["error"]["limit"].as_str(), limited.body()["error"]["allowed"].as_u64()),
            (Some("user_writes"), Some(5))
        );
        let unavailable = ApiError::Unavailable { code: "x", message: "m".into(), retry_after: 7 };
        assert_eq!(unavailable.headers(), vec![("Retry-After", "7".to_owned())]);
    }

    #[test]
    fn internal_detail_never_reaches_the_body() {
        let body = ApiError::internal("D1_ERROR: no such table: secrets").body().to_string();
        assert!(!body.contains("secrets"), "{body}");
    }
}
