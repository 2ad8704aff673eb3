//! Which tenant a request is for, decided from the request URL's host and the `X-Tenant-ID`
//! header, before anything else happens.
//!
//! | host                                   | route                                   |
//! |----------------------------------------|-----------------------------------------|
//! | `{APEX}`, `{reserved}.{APEX}`          | control plane, or the tenant named by `X-Tenant-ID` |
//! | `{slug}.{APEX}`                        | tenant `slug` (`X-Tenant-ID`, if sent, must agree) |
//! | `{not a slug}.{APEX}`                  | 400 invalid tenant in host              |
//! | `a.b.{APEX}`, any other host           | 404 unknown host                        |
//!
//! Host names are case-insensitive (RFC 4343), so the host is lowercased and one trailing dot
//! removed before matching. The header is an identifier and is taken exactly as sent.

use super::config::Apex;
use super::slug::{SlugError, TenantSlug, RESERVED};

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The platform's own API (admin, health).
    ControlPlane,
    /// A tenant's API, served from that tenant's database only.
    Tenant(TenantSlug),
}

/// Why a request cannot be routed. Each maps to a 4xx answer; none touches a database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("this host is not served here")]
    UnknownHost,
    #[error("the subdomain is not a valid tenant: {0}")]
    InvalidSubdomain(SlugError),
    #[error("the X-Tenant-ID header is not a valid tenant: {0}")]
    InvalidHeader(SlugError),
    #[error("the X-Tenant-ID header names a different tenant than the host")]
    Conflict,
}

/// A host name as compared: lower case, without the root's trailing dot.
fn normalize(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    host.strip_suffix('.').map(str::to_owned).unwrap_or(host)
}

/// Whether `host` names this machine (`localhost`, `*.localhost`, the loopback addresses).
pub fn is_loopback(host: &str) -> bool {
    let host = normalize(host);
    host == "localhost" || host.ends_with(".localhost") || host == "127.0.0.1" || host == "[::1]" || host == "::1"
}

/// Resolves `host` (the URL's host, without port) and the optional `X-Tenant-ID` header.
pub fn resolve(host: &str, tenant_header: Option<&str>, apex: &Apex) -> Result<Route, HostError> {
    let host = normalize(host);
    let host = host.as_str();
    let subdomain = if host == apex.as_str() {
        None
    } else {
        let label =
            host.strip_suffix(apex.as_str()).and_then(|rest| rest.strip_suffix('.')).ok_or(HostError::UnknownHost)?;
        if label.is_empty() || label.contains('.') {
            return Err(HostError::UnknownHost);
        }
        Some(label)
    };
    let header = match tenant_header {
        None => None,
        Some(value) => Some(TenantSlug::parse(value).map_err(HostError::InvalidHeader)?),
    };

    match subdomain {
        None => Ok(header.map_or(Route::ControlPlane, Route::Tenant)),
        Some(label) if RESERVED.contains(&label) => Ok(header.map_or(Route::ControlPlane, Route::Tenant)),
        Some(label) => {
            let slug = TenantSlug::parse(label).map_err(HostError::InvalidSubdomain)?;
            match header {
                Some(other) if other != slug => Err(HostError::Conflict),
                _ => Ok(Route::Tenant(slug)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in ["localhost", "LOCALHOST.", "acme.localhost", "127.0.0.1", "[::1]"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["example.com", "localhost.example.com", "127.0.0.2", "notlocalhost", ""] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    fn tenant(s: &str) -> Result<Route, HostError> {
        Ok(Route::Tenant(TenantSlug::parse(s).unwrap()))
    }

    /// (apex, host, X-Tenant-ID, expected route)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Result<Route, HostError>);

    #[test]
    fn table() {
        let cases: &[Case] = &[
            // apex and reserved subdomains
            ("example.com", "example.com", None, Ok(Route::ControlPlane)),
            ("example.com", "EXAMPLE.com", None, Ok(Route::ControlPlane)),
            ("example.com", "example.com.", None, Ok(Route::ControlPlane)),
            ("example.com", "www.example.com", None, Ok(Route::ControlPlane)),
            ("example.com", "admin.example.com", None, Ok(Route::ControlPlane)),
            ("localhost", "localhost", None, Ok(Route::ControlPlane)),
            // tenants by subdomain
            ("example.com", "acme.example.com", None, tenant("acme")),
            ("example.com", "ACME.Example.COM", None, tenant("acme")),
            ("example.com", "acme-corp.example.com.", None, tenant("acme-corp")),
            ("localhost", "acme.localhost", None, tenant("acme")),
            // tenants by header on the apex (and reserved subdomains)
            ("example.com", "example.com", Some("acme"), tenant("acme")),
            ("example.com", "api.example.com", Some("globex"), tenant("globex")),
            // header and subdomain
            ("example.com", "acme.example.com", Some("acme"), tenant("acme")),
            ("example.com", "acme.example.com", Some("globex"), Err(HostError::Conflict)),
            ("example.com", "acme.example.com", Some("ACME"), Err(HostError::InvalidHeader(SlugError::Character))),
            ("example.com", "example.com", Some(""), Err(HostError::InvalidHeader(SlugError::Length))),
            ("example.com", "example.com", Some("admin"), Err(HostError::InvalidHeader(SlugError::Reserved))),
            // malformed tenant subdomains
            ("example.com", "ab.example.com", None, Err(HostError::InvalidSubdomain(SlugError::Length))),
            ("example.com", "-acme.example.com", None, Err(HostError::InvalidSubdomain(SlugError::EdgeDash))),
            ("example.com", "ac--me.example.com", None, Err(HostError::InvalidSubdomain(SlugError::DoubleDash))),
            ("example.com", "ac_me.example.com", None, Err(HostError::InvalidSubdomain(SlugError::Character))),
            ("example.com", "xn--acm-bla.example.com", None, Err(HostError::InvalidSubdomain(SlugError::DoubleDash))),
            // hosts we do not serve
            ("example.com", "a.b.example.com", None, Err(HostError::UnknownHost)),
            ("example.com", ".example.com", None, Err(HostError::UnknownHost)),
            ("example.com", "evil-example.com", None, Err(HostError::UnknownHost)),
            ("example.com", "acme.example.com.evil.net", None, Err(HostError::UnknownHost)),
            ("example.com", "example.org", None, Err(HostError::UnknownHost)),
            ("example.com", "127.0.0.1", None, Err(HostError::UnknownHost)),
            ("example.com", "", None, Err(HostError::UnknownHost)),
            ("localhost", "acme.localhost.example.com", None, Err(HostError::UnknownHost)),
            // an unknown host with a valid header is still unknown
            ("example.com", "example.org", Some("acme"), Err(HostError::UnknownHost)),
            ("example.com", "example.org", Some("NOT VALID"), Err(HostError::UnknownHost)),
        ];
        for (apex, host, header, want) in cases {
            let apex = Apex::parse(apex).unwrap();
            assert_eq!(&resolve(host, *header, &apex), want, "host={host:?} header={header:?}");
        }
    }
}
