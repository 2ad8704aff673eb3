//! The Worker's configuration, parsed and validated once from plain strings (vars in
//! `wrangler.toml`); the edge reads them from `Env` and hands them here.

use super::names::{DatabasePrefix, NameError};

/// The apex domain tenants are subdomains of (`example.com`, locally `localhost`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Apex(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("APEX must be a lowercase host name such as `example.com` (got {0:?})")]
    Apex(String),
    #[error("D1_NAME_PREFIX: {0}")]
    Prefix(#[from] NameError),
}

impl Apex {
    pub fn parse(value: &str) -> Result<Self, ConfigError> {
        let valid_label = |label: &str| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if value.len() <= 253 && value.split('.').all(valid_label) {
            Ok(Self(value.to_owned()))
        } else {
            Err(ConfigError::Apex(value.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Everything the request path needs to know about this deployment.
#[derive(Debug, Clone)]
pub struct Config {
    pub apex: Apex,
    pub db_prefix: DatabasePrefix,
}

impl Config {
    /// `apex` from the `APEX` var, `db_prefix` from `D1_NAME_PREFIX`.
    pub fn parse(apex: &str, db_prefix: &str) -> Result<Self, ConfigError> {
        Ok(Self { apex: Apex::parse(apex)?, db_prefix: DatabasePrefix::parse(db_prefix)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apex_values() {
        for ok in ["localhost", "example.com", "saas.example.co.uk", "a-b.io"] {
            assert!(Apex::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Example.com",
            "example.com.",
            ".example.com",
            "exa mple.com",
            "-x.com",
            "x..com",
            "x.com:8787",
            "*.x.com",
        ] {
            assert_eq!(Apex::parse(bad), Err(ConfigError::Apex(bad.to_owned())), "{bad:?}");
        }
    }

    #[test]
    fn config_parses_both_values() {
        let cfg = Config::parse("example.com", "tenantry-").unwrap();
        assert_eq!(cfg.apex.as_str(), "example.com");
        assert_eq!(cfg.db_prefix.as_str(), "tenantry-");
        assert!(matches!(Config::parse("example.com", "Bad"), Err(ConfigError::Prefix(_))));
    }
}
