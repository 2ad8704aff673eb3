//! What the control plane needs from the world besides its own tables, as small traits: backup
//! storage, which tenant databases this invocation can reach by binding, and the clock. With
//! [`Sql`] (the control store) and `cloudflare::Transport` (the Cloudflare API) they make a
//! [`Platform`], which the lifecycle is generic over.
//!
//! Implementations: the Worker's in `crate::edge` (R2, `env.d1`, `Date.now` and `setTimeout`), the
//! in-memory ones in `crate::fake` (native tests and the fleet simulation).

use std::time::Duration;

use super::sql::Sql;
use crate::cloudflare::Transport;
use crate::core::names::BindingName;

/// A backup store failed (R2 trouble: worth trying again later).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("backup storage: {0}")]
pub struct BackupError(pub String);

/// What [`Backups::store_export`] stored, as it read it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub bytes: usize,
    pub sha256: String,
    /// The MD5, hex: what D1's import asks for (`etag`) when it is restored.
    pub md5: String,
    /// Rows per table in the dump.
    pub rows: std::collections::BTreeMap<String, u64>,
}

/// Where tenant backups go (an R2 bucket in the Worker). Dumps are streamed through, never held
/// whole by the caller: a tenant database can be far larger than a Worker's memory.
#[allow(async_fn_in_trait)]
pub trait Backups {
    /// The binding the objects live under, for their `r2://{bucket}/{key}` locations.
    fn bucket(&self) -> &str;
    async fn exists(&self, key: &str) -> Result<bool, BackupError>;
    /// Streams the export at `url` into object `key`, then reads the object back and checks its
    /// size and SHA-256 against what was downloaded (an error when they differ).
    async fn store_export(&self, url: &str, key: &str, metadata: &[(&str, &str)]) -> Result<Stored, BackupError>;
    /// Streams object `key` to an import's upload URL. `Ok(false)` when the object is missing.
    async fn upload_to(&self, key: &str, url: &str) -> Result<bool, BackupError>;
    /// Deletes object `key` (one already gone is not an error).
    async fn delete(&self, key: &str) -> Result<(), BackupError>;
    /// The keys under `prefix` (all pages).
    async fn list(&self, prefix: &str) -> Result<Vec<String>, BackupError>;
}

/// The tenant databases this invocation can reach by binding. A binding added by a settings
/// change is visible only to invocations of the Worker version that change made, never to the
/// invocation that made it.
pub trait Bindings {
    type Db: Sql;
    /// Tenant binding `binding` where it lives. `None` when this invocation can tell it is not
    /// there; through a host that is known only when a statement is sent (an error with
    /// `not_bound`).
    fn database(&self, home: Home<'_>, binding: &BindingName) -> Option<Self::Db>;
}

/// Where a tenant's binding lives: on the main Worker itself, or on a binding host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Home<'a> {
    Main,
    Host(&'a str),
}

impl<'a> Home<'a> {
    /// The home of a tenant served through `host` (`None`: the main Worker).
    pub fn of(host: Option<&'a str>) -> Self {
        host.map_or(Self::Main, Self::Host)
    }
}

/// Wall-clock time and waiting.
#[allow(async_fn_in_trait)]
pub trait Clock {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> f64;
    async fn sleep(&self, duration: Duration);
}

/// Everything the control plane's lifecycle runs on.
pub trait Platform {
    /// The control-plane database.
    type Control: Sql;
    /// The network to the Cloudflare API.
    type Transport: Transport;
    type Backups: Backups;
    type Bindings: Bindings;
    type Clock: Clock;
}
