//! The Worker's configuration: the one root every part reads, parsed and validated once from
//! plain strings (vars in `wrangler.toml`, secrets); the edge reads them from `Env` once per
//! isolate (`crate::edge::config`) and hands them here.
//!
//! The host and the database prefix are needed by every request: without them nothing is served
//! (an error). The rest is needed by one part each, so a missing piece disables only that part,
//! which then answers 503 saying so: provisioning (`cloudflare`), the admin API (`admin_token`),
//! sign-in (`signing_keys`).

use std::fmt;

use super::names::{DatabasePrefix, NameError};
use super::token::{KeyRing, MasterKey};

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

/// A secret value: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How to reach the Cloudflare API, for provisioning.
#[derive(Debug, Clone)]
pub struct CloudflareConfig {
    pub account_id: String,
    pub api_base: String,
    pub api_token: Secret,
    /// The Worker script whose bindings tenants get (`WORKER_SCRIPT_NAME`, default `tenantry`).
    pub script: String,
}

/// Tenants migrated at once by a fleet pass unless `MIGRATION_CONCURRENCY` says otherwise.
pub const DEFAULT_MIGRATION_CONCURRENCY: usize = 8;

/// Tenant bindings per binding host by default: a safe margin under the documented ~5,000 (1 MB
/// of script metadata at ~150 bytes a binding).
pub const DEFAULT_HOST_CAPACITY: usize = 4_000;
/// The most a host may be configured to hold.
pub const MAX_HOST_CAPACITY: usize = 5_000;

/// Where tenant bindings live: on binding hosts, Worker scripts in a Workers for Platforms
/// dispatch namespace that tenantry uploads and manages (set `HOSTS_NAMESPACE`), or, without one,
/// on the main Worker itself (the single-script layout, bounded by its ~5,000 bindings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsConfig {
    /// The dispatch namespace (var `HOSTS_NAMESPACE`); the main Worker reaches it through its
    /// `HOSTS_DISPATCHER` dispatch-namespace binding.
    pub namespace: String,
    /// Tenant bindings per host (var `HOST_CAPACITY`).
    pub capacity: usize,
}

/// Scheduled backups and restores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupConfig {
    /// A tenant is due for a scheduled backup this long after its last one (`BACKUP_INTERVAL_HOURS`, 24).
    pub interval_ms: i64,
    /// Which scheduled backups are kept (`BACKUP_RETENTION`, `daily=7,weekly=8`).
    pub retention: super::backups::Retention,
    /// Tenants backed up at once by a pass (`BACKUP_CONCURRENCY`, 4).
    pub concurrency: usize,
    /// How long the database a restore replaced is kept before it is dropped, unless the
    /// operator confirms sooner (`RESTORE_KEEP_HOURS`, 72).
    pub keep_replaced_ms: i64,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            interval_ms: 24 * HOUR_MS,
            retention: Default::default(),
            concurrency: 4,
            keep_replaced_ms: 72 * HOUR_MS,
        }
    }
}

const HOUR_MS: i64 = 3_600_000;

/// Everything this deployment is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    pub apex: Apex,
    pub db_prefix: DatabasePrefix,
    /// `Err` names what is missing.
    pub cloudflare: Result<CloudflareConfig, String>,
    /// `ADMIN_TOKEN`; `None` (or empty) disables the admin API.
    pub admin_token: Option<Secret>,
    /// `JWT_SIGNING_KEY` and optionally `JWT_SIGNING_KEY_PREVIOUS`; `Err` says what is wrong.
    pub signing_keys: Result<KeyRing, String>,
    /// `ORPHAN_POLICY=remove`: the reconciler deletes databases with our prefix no tenant owns.
    pub remove_orphans: bool,
    pub migration_concurrency: usize,
    pub hosts: Option<HostsConfig>,
    pub backups: BackupConfig,
}

impl Config {
    /// `apex` from the `APEX` var, `db_prefix` from `D1_NAME_PREFIX`; nothing else configured.
    pub fn parse(apex: &str, db_prefix: &str) -> Result<Self, ConfigError> {
        Self::from_lookup(
            |name| match name {
                "APEX" => Some(apex.to_owned()),
                "D1_NAME_PREFIX" => Some(db_prefix.to_owned()),
                _ => None,
            },
            |_| None,
        )
    }

    /// From the deployment's vars and secrets (`None`: not set; an empty value counts as unset).
    pub fn from_lookup(
        var: impl Fn(&str) -> Option<String>,
        secret: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let var = |name: &str| var(name).filter(|v| !v.is_empty());
        let secret = |name: &str| secret(name).filter(|v| !v.is_empty());
        let apex = Apex::parse(&var("APEX").unwrap_or_default())?;
        let db_prefix = DatabasePrefix::parse(&var("D1_NAME_PREFIX").unwrap_or_default())?;
        let cloudflare = match (secret("CLOUDFLARE_API_TOKEN"), var("CLOUDFLARE_ACCOUNT_ID")) {
            (None, _) => Err("secret CLOUDFLARE_API_TOKEN is not set".to_owned()),
            (_, None) => Err("var CLOUDFLARE_ACCOUNT_ID is not set".to_owned()),
            (Some(token), Some(account_id)) => Ok(CloudflareConfig {
                account_id,
                api_base: var("CLOUDFLARE_API_BASE_URL")
                    .unwrap_or_else(|| "https://api.cloudflare.com/client/v4".into()),
                api_token: Secret(token),
                script: var("WORKER_SCRIPT_NAME").unwrap_or_else(|| "tenantry".into()),
            }),
        };
        let signing_keys = match secret("JWT_SIGNING_KEY") {
            None => Err("secret JWT_SIGNING_KEY is not set".to_owned()),
            Some(current) => {
                MasterKey::parse(&current).map_err(|e| format!("JWT_SIGNING_KEY: {e}")).and_then(|current| {
                    let previous = secret("JWT_SIGNING_KEY_PREVIOUS")
                        .map(|p| MasterKey::parse(&p).map_err(|e| format!("JWT_SIGNING_KEY_PREVIOUS: {e}")))
                        .transpose()?;
                    Ok(KeyRing { current, previous })
                })
            }
        };
        Ok(Self {
            apex,
            db_prefix,
            cloudflare,
            admin_token: secret("ADMIN_TOKEN").map(Secret),
            signing_keys,
            remove_orphans: var("ORPHAN_POLICY").as_deref() == Some("remove"),
            migration_concurrency: var("MIGRATION_CONCURRENCY")
                .and_then(|v| v.parse().ok())
                .filter(|n| (1..=32).contains(n))
                .unwrap_or(DEFAULT_MIGRATION_CONCURRENCY),
            hosts: var("HOSTS_NAMESPACE").map(|namespace| HostsConfig {
                namespace,
                capacity: var("HOST_CAPACITY")
                    .and_then(|v| v.parse().ok())
                    .filter(|n| (1..=MAX_HOST_CAPACITY).contains(n))
                    .unwrap_or(DEFAULT_HOST_CAPACITY),
            }),
            backups: {
                let defaults = BackupConfig::default();
                let hours =
                    |name: &str| var(name).and_then(|v| v.parse::<f64>().ok()).filter(|h| *h > 0.0 && *h <= 87_600.0);
                BackupConfig {
                    interval_ms: hours("BACKUP_INTERVAL_HOURS")
                        .map_or(defaults.interval_ms, |h| (h * HOUR_MS as f64) as i64),
                    // A policy that does not parse keeps the default (and says so in the pass's report).
                    retention: var("BACKUP_RETENTION")
                        .and_then(|v| super::backups::Retention::parse(&v).ok())
                        .unwrap_or(defaults.retention),
                    concurrency: var("BACKUP_CONCURRENCY")
                        .and_then(|v| v.parse().ok())
                        .filter(|n| (1..=16).contains(n))
                        .unwrap_or(defaults.concurrency),
                    keep_replaced_ms: hours("RESTORE_KEEP_HOURS")
                        .map_or(defaults.keep_replaced_ms, |h| (h * HOUR_MS as f64) as i64),
                }
            },
        })
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
        assert!(matches!(Config::parse("", "tenantry-"), Err(ConfigError::Apex(_))));
    }

    #[test]
    fn each_missing_piece_disables_only_its_part() {
        let vars = |name: &str| {
            match name {
                "APEX" => Some("example.com"),
                "D1_NAME_PREFIX" => Some("tenantry-"),
                "CLOUDFLARE_ACCOUNT_ID" => Some("acct"),
                "ORPHAN_POLICY" => Some("remove"),
                "MIGRATION_CONCURRENCY" => Some("99"),
                _ => None,
            }
            .map(str::to_owned)
        };
        let cfg = Config::from_lookup(vars, |name| (name == "ADMIN_TOKEN").then(|| "t0ken".to_owned())).unwrap();
        assert_eq!(cfg.cloudflare.unwrap_err(), "secret CLOUDFLARE_API_TOKEN is not set");
        assert_eq!(cfg.signing_keys.unwrap_err(), "secret JWT_SIGNING_KEY is not set");
        assert_eq!(cfg.admin_token.as_ref().map(Secret::expose), Some("t0ken"));
        assert_eq!(format!("{:?}", cfg.admin_token), "Some(Secret(***))");
        assert!(cfg.remove_orphans);
        assert_eq!(cfg.migration_concurrency, DEFAULT_MIGRATION_CONCURRENCY, "out of range falls back");

        let secrets = |name: &str| (name == "CLOUDFLARE_API_TOKEN").then(|| "cf".to_owned());
        let cf = Config::from_lookup(vars, secrets).unwrap().cloudflare.unwrap();
        assert_eq!((cf.account_id.as_str(), cf.script.as_str()), ("acct", "tenantry"));
        assert_eq!(cf.api_base, "https://api.cloudflare.com/client/v4");
    }
}
