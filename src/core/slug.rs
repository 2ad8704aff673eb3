//! Tenant slugs: the name of a tenant in its subdomain, its D1 database name and its binding.

use std::fmt;

/// Subdomains that always answer the control plane and can never name a tenant.
///
/// `control` is here because the control-plane database is named `{prefix}control`.
pub const RESERVED: &[&str] = &[
    "www",
    "admin",
    "api",
    "app",
    "control",
    "dashboard",
    "auth",
    "login",
    "status",
    "docs",
    "static",
    "assets",
    "cdn",
    "mail",
    "billing",
    "support",
    "help",
    "blog",
];

/// Shortest and longest slug accepted.
pub const MIN_LEN: usize = 3;
pub const MAX_LEN: usize = 40;

/// A valid tenant slug: 3 to 40 lowercase ASCII letters, digits and single dashes, not starting
/// or ending with a dash, not reserved. A value of this type cannot be invalid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantSlug(String);

/// Why a string is not a tenant slug. The messages are safe to show to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlugError {
    #[error("a tenant slug must be {MIN_LEN} to {MAX_LEN} characters long")]
    Length,
    #[error("a tenant slug may only contain lowercase letters a-z, digits and dashes")]
    Character,
    #[error("a tenant slug cannot start or end with a dash")]
    EdgeDash,
    #[error("a tenant slug cannot contain two dashes in a row")]
    DoubleDash,
    #[error("this name is reserved and cannot be used as a tenant slug")]
    Reserved,
}

impl TenantSlug {
    /// Parses `value` as a slug, exactly as given (no case folding, no trimming).
    pub fn parse(value: &str) -> Result<Self, SlugError> {
        if !(MIN_LEN..=MAX_LEN).contains(&value.len()) {
            // `len` counts bytes; a non-ASCII slug of the right byte length fails below.
            return Err(SlugError::Length);
        }
        if !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(SlugError::Character);
        }
        if value.starts_with('-') || value.ends_with('-') {
            return Err(SlugError::EdgeDash);
        }
        if value.contains("--") {
            return Err(SlugError::DoubleDash);
        }
        if RESERVED.contains(&value) {
            return Err(SlugError::Reserved);
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_slugs() {
        for ok in ["acme", "a1b", "acme-corp", "x-y-z", "123", "a".repeat(40).as_str(), "tenant-42"] {
            assert_eq!(TenantSlug::parse(ok).map(|s| s.to_string()), Ok(ok.to_owned()), "{ok}");
        }
    }

    #[test]
    fn rejects_invalid_slugs_with_the_reason() {
        let cases: &[(&str, SlugError)] = &[
            ("", SlugError::Length),
            ("ab", SlugError::Length),
            (&"a".repeat(41), SlugError::Length),
            ("Acme", SlugError::Character),
            ("acme_corp", SlugError::Character),
            ("acme.corp", SlugError::Character),
            ("acme corp", SlugError::Character),
            ("acmé", SlugError::Character),
            ("ａｃｍｅ", SlugError::Character),
            ("-acme", SlugError::EdgeDash),
            ("acme-", SlugError::EdgeDash),
            ("ac--me", SlugError::DoubleDash),
            ("www", SlugError::Reserved),
            ("admin", SlugError::Reserved),
            ("control", SlugError::Reserved),
            ("acme'; DROP TABLE tenants;--", SlugError::Character),
        ];
        for (input, want) in cases {
            assert_eq!(TenantSlug::parse(input).as_ref(), Err(want), "{input:?}");
        }
    }

    #[test]
    fn every_reserved_name_is_rejected() {
        for name in RESERVED {
            assert!(TenantSlug::parse(name).is_err(), "{name}");
        }
    }
}
