//! In-memory backups, bindings and clock, and a control store that can crash after a write.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use super::{Crash, FakeCloudflare, MemorySql};
use crate::core::names::BindingName;
use crate::store::ports::{BackupError, Backups, Bindings, Clock, Home, Stored};
use crate::store::sql::{Outcome, Sql, SqlError, Statement};

/// An [`Sql`] whose writes are effects of a [`Crash`]: a batch that changed a row may be the last
/// thing the process did.
#[derive(Clone)]
pub struct Crashing<S> {
    pub inner: S,
    pub crash: Crash,
}

impl<S: Sql> Sql for Crashing<S> {
    async fn batch(&self, statements: Vec<Statement>) -> Result<Vec<Outcome>, SqlError> {
        let out = self.inner.batch(statements).await?;
        if out.iter().any(Outcome::changed) {
            self.crash.after_effect().await;
        }
        Ok(out)
    }
}

/// An object: its bytes and custom metadata.
type Object = (Vec<u8>, HashMap<String, String>);

/// Objects in memory, as an R2 bucket holds them. Exports are fetched from the fake Cloudflare
/// (through its transport: download faults apply) and imports uploaded to it.
#[derive(Clone)]
pub struct MemoryBackups {
    objects: Rc<RefCell<BTreeMap<String, Object>>>,
    cloud: FakeCloudflare,
    crash: Crash,
}

impl MemoryBackups {
    pub fn new(cloud: FakeCloudflare, crash: Crash) -> Self {
        Self { objects: Rc::default(), cloud, crash }
    }

    /// The keys stored, in order.
    pub fn keys(&self) -> Vec<String> {
        self.objects.borrow().keys().cloned().collect()
    }

    /// An object's custom metadata.
    pub fn metadata(&self, key: &str) -> Option<HashMap<String, String>> {
        self.objects.borrow().get(key).map(|(_, meta)| meta.clone())
    }

    /// An object's bytes.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.objects.borrow().get(key).map(|(bytes, _)| bytes.clone())
    }
}

impl Backups for MemoryBackups {
    fn bucket(&self) -> &str {
        "BACKUPS"
    }

    async fn exists(&self, key: &str) -> Result<bool, BackupError> {
        Ok(self.objects.borrow().contains_key(key))
    }

    async fn store_export(&self, url: &str, key: &str, metadata: &[(&str, &str)]) -> Result<Stored, BackupError> {
        use crate::cloudflare::{Body, HttpRequest, Method, Transport};
        let request = HttpRequest { method: Method::Get, url: url.to_owned(), authorization: None, body: Body::None };
        let response = self.cloud.send(&request).await.map_err(|e| BackupError(format!("download: {e:?}")))?;
        if response.status != 200 {
            return Err(BackupError(format!("the export's download answered HTTP {}", response.status)));
        }
        let bytes = response.body;
        let stored = Stored {
            bytes: bytes.len(),
            sha256: crate::core::digest::sha256_hex(&bytes),
            md5: crate::core::digest::md5_hex(&bytes),
            rows: crate::core::backups::row_counts(&String::from_utf8_lossy(&bytes)),
        };
        let meta = metadata.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        self.objects.borrow_mut().insert(key.to_owned(), (bytes, meta));
        self.crash.after_effect().await;
        Ok(stored)
    }

    async fn upload_to(&self, key: &str, url: &str) -> Result<bool, BackupError> {
        use crate::cloudflare::{Body, HttpRequest, Method, Transport};
        let Some(bytes) = self.get(key) else { return Ok(false) };
        let request =
            HttpRequest { method: Method::Put, url: url.to_owned(), authorization: None, body: Body::Bytes(bytes) };
        let response = self.cloud.send(&request).await.map_err(|e| BackupError(format!("upload: {e:?}")))?;
        if !(200..300).contains(&response.status) {
            return Err(BackupError(format!("the import's upload answered HTTP {}", response.status)));
        }
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<(), BackupError> {
        self.objects.borrow_mut().remove(key);
        self.crash.after_effect().await;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BackupError> {
        Ok(self.objects.borrow().keys().filter(|k| k.starts_with(prefix)).cloned().collect())
    }
}

/// The tenant databases one invocation reaches by binding: every script (the main Worker and
/// each binding host) at the settings version it had when the invocation started, so a binding
/// change made during the invocation is not visible to it.
#[derive(Clone)]
pub struct FakeBindings {
    cloud: FakeCloudflare,
    version: u64,
    /// The hosts' namespace, and each script's settings version when the invocation started.
    namespace: String,
    versions: HashMap<String, u64>,
}

impl FakeBindings {
    pub fn snapshot(cloud: &FakeCloudflare, namespace: &str) -> Self {
        Self {
            cloud: cloud.clone(),
            version: cloud.settings_version(),
            namespace: namespace.to_owned(),
            versions: cloud.settings_versions(),
        }
    }
}

impl Bindings for FakeBindings {
    type Db = MemorySql;
    fn database(&self, home: Home<'_>, binding: &BindingName) -> Option<MemorySql> {
        match home {
            Home::Main => self.cloud.bound_at(binding.as_str(), self.version),
            Home::Host(host) => {
                let key = format!("{}/{host}", self.namespace);
                self.cloud.bound_in_at(&key, binding.as_str(), *self.versions.get(&key)?)
            }
        }
    }
}

/// Tokio's clock, which tests pause and advance (`#[tokio::test(start_paused = true)]`), read as
/// wall-clock milliseconds from a fixed start.
#[derive(Clone)]
pub struct VirtualClock {
    origin: tokio::time::Instant,
    start_ms: f64,
}

impl VirtualClock {
    /// 2026-11-23T00:00:00Z at the moment of the call.
    pub fn new() -> Self {
        Self { origin: tokio::time::Instant::now(), start_ms: 1_795_392_000_000.0 }
    }

    /// Milliseconds since the clock was made.
    pub fn elapsed_ms(&self) -> f64 {
        self.origin.elapsed().as_secs_f64() * 1000.0
    }
}

impl Default for VirtualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for VirtualClock {
    fn now_ms(&self) -> f64 {
        self.start_ms + self.elapsed_ms()
    }
    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await
    }
}
