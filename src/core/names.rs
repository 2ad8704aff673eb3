//! What a tenant's Cloudflare resources are called, derived deterministically from its slug.
//!
//! Determinism is what makes provisioning resumable: a create cut short can find "its" database
//! again by name, and the bindings reconciler can derive the whole binding set from the registry.

use std::fmt;

use super::slug::TenantSlug;

/// The name of a Worker binding (an identifier in `env`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BindingName(String);

/// The name of a D1 database in the Cloudflare account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DatabaseName(String);

/// Binding names of tenant databases all start with this, so tenant bindings can be told apart
/// from the Worker's own bindings (`CONTROL_DB`, ...) by name alone.
pub const TENANT_BINDING_PREFIX: &str = "TENANT_";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a database name prefix must be 1 to 20 characters of a-z, 0-9, '-' or '_'")]
    Prefix,
}

impl BindingName {
    /// `acme-corp` becomes `TENANT_ACME_CORP`. Slugs have no underscores, so this is one-to-one.
    pub fn for_tenant(slug: &TenantSlug) -> Self {
        Self(format!("{TENANT_BINDING_PREFIX}{}", slug.as_str().to_ascii_uppercase().replace('-', "_")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl DatabaseName {
    /// The tenant's database name: `{prefix}{slug}`.
    pub fn for_tenant(prefix: &DatabasePrefix, slug: &TenantSlug) -> Self {
        Self(format!("{}{}", prefix.0, slug.as_str()))
    }

    /// The control plane's database name: `{prefix}control` (`control` is a reserved slug).
    pub fn control_plane(prefix: &DatabasePrefix) -> Self {
        Self(format!("{}control", prefix.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The prefix every database tenantry creates carries, so the orphan scan can tell ours apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabasePrefix(String);

impl DatabasePrefix {
    pub fn parse(value: &str) -> Result<Self, NameError> {
        let ok = (1..=20).contains(&value.len())
            && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(NameError::Prefix)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BindingName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for DatabaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slug(s: &str) -> TenantSlug {
        TenantSlug::parse(s).unwrap()
    }

    #[test]
    fn binding_names() {
        for (input, want) in
            [("acme", "TENANT_ACME"), ("acme-corp", "TENANT_ACME_CORP"), ("a1-b2-c3", "TENANT_A1_B2_C3")]
        {
            assert_eq!(BindingName::for_tenant(&slug(input)).as_str(), want);
        }
    }

    #[test]
    fn database_names() {
        let prefix = DatabasePrefix::parse("tenantry-").unwrap();
        assert_eq!(DatabaseName::for_tenant(&prefix, &slug("acme")).as_str(), "tenantry-acme");
        assert_eq!(DatabaseName::control_plane(&prefix).as_str(), "tenantry-control");
    }

    #[test]
    fn prefixes() {
        for ok in ["tenantry-", "t_", "x", "prod-tenants-2024-"] {
            assert!(DatabasePrefix::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Tenantry-", "a b", "tenantry.", &"a".repeat(21)] {
            assert_eq!(DatabasePrefix::parse(bad), Err(NameError::Prefix), "{bad:?}");
        }
    }

    #[test]
    fn no_tenant_can_take_the_control_plane_name() {
        let prefix = DatabasePrefix::parse("tenantry-").unwrap();
        assert!(TenantSlug::parse("control").is_err());
        assert_ne!(
            DatabaseName::control_plane(&prefix).as_str(),
            DatabaseName::for_tenant(&prefix, &slug("contro1")).as_str()
        );
    }
}
