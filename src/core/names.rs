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

/// Binding names of hot tenants' databases on the main Worker start with this: `npm run deploy`
/// binds the busiest tenants there, each under its database's id (see [`BindingName::hot`]).
pub const HOT_BINDING_PREFIX: &str = "HOT_";

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

    /// The main Worker's binding of database `database_id` when `npm run deploy` bound it there
    /// for a hot tenant: `HOT_` and the id's 32 hex digits, lowercase, without dashes
    /// (`scripts/deploy.mjs` derives the same name). Named by the database, not the tenant, so a
    /// binding left on an older version (a rollback, a bare `wrangler deploy`) can only ever
    /// reach the database it names: a tenant whose database changed (a restore from a backup)
    /// no longer finds it and goes through its host. `None` for an id that is not a UUID.
    pub fn hot(database_id: &str) -> Option<Self> {
        let mut name = String::with_capacity(HOT_BINDING_PREFIX.len() + 32);
        name.push_str(HOT_BINDING_PREFIX);
        for c in database_id.chars().filter(|c| *c != '-') {
            if !c.is_ascii_hexdigit() {
                return None;
            }
            name.push(c.to_ascii_lowercase());
        }
        (name.len() == HOT_BINDING_PREFIX.len() + 32).then_some(Self(name))
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
    fn hot_binding_names_are_the_database_id_and_nothing_else() {
        let name = BindingName::hot("0F1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0").unwrap();
        assert_eq!(name.as_str(), "HOT_0f1e2d3c4b5a69788796a5b4c3d2e1f0");
        for bad in [
            "",
            "acme",
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f",
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0a",
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1fg",
        ] {
            assert_eq!(BindingName::hot(bad), None, "{bad}");
        }
        assert!(!name.as_str().starts_with(TENANT_BINDING_PREFIX), "the reconciler must pass it through untouched");
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
