//! A whole control plane in memory: the control database, the Cloudflare account, the backup
//! bucket, a clock, and a crash switch. Each [`World::invocation`] is a new Worker invocation: a
//! lifecycle with its own lease holder, seeing the tenant bindings the script has at that moment.
//! [`World::violations`] checks the invariants a converged fleet must hold.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::json;

use super::{Crash, Crashing, FakeBindings, FakeCloudflare, MemoryBackups, MemorySql, VirtualClock};
use crate::cloudflare::{ApiToken, Client};
use crate::control::lifecycle::{CreateInput, Lifecycle, Settings};
use crate::core::config::HostsConfig;
use crate::core::lifecycle::{OperationKind, Plan, TenantStatus};
use crate::core::migrations;
use crate::core::names::{BindingName, DatabaseName, DatabasePrefix};
use crate::core::retry::RetryPolicy;
use crate::core::slug::TenantSlug;
use crate::sql;
use crate::store::control::{ControlStore, CreateStart, NewTenant, OperationRow};
use crate::store::ports::Platform;
use crate::store::sql::Sql;
use crate::store::{migrate, tenant_db};

/// The in-memory platform.
pub struct FakePlatform;

impl Platform for FakePlatform {
    type Control = Crashing<MemorySql>;
    type Transport = FakeCloudflare;
    type Backups = MemoryBackups;
    type Bindings = FakeBindings;
    type Clock = VirtualClock;
}

pub const SCRIPT: &str = "tenantry";
pub const PREFIX: &str = "tenantry-";
/// The binding hosts' dispatch namespace.
pub const NAMESPACE: &str = "tenantry-hosts";

pub struct World {
    pub control: MemorySql,
    pub cloud: FakeCloudflare,
    pub backups: MemoryBackups,
    pub clock: VirtualClock,
    pub crash: Crash,
    /// `ORPHAN_POLICY=remove` for the invocations made from now on.
    pub remove_orphans: Cell<bool>,
    /// Binding hosts for the invocations made from now on (`None`: the single-script layout).
    pub hosts: std::cell::RefCell<Option<HostsConfig>>,
    invocations: Cell<u64>,
    ids: Cell<u64>,
}

impl World {
    /// A migrated control plane and an account whose script has only its own bindings.
    pub async fn new(seed: u64) -> Self {
        let crash = Crash::default();
        let control = MemorySql::new();
        migrate::apply_pending(&control, migrations::CONTROL).await.expect("the control migrations apply");
        let own = vec![
            json!({ "type": "d1", "name": "CONTROL_DB", "id": "control-plane" }),
            json!({ "type": "plain_text", "name": "APEX", "text": "example.com" }),
            json!({ "type": "r2_bucket", "name": "BACKUPS", "bucket_name": "tenantry-backups" }),
        ];
        let cloud = FakeCloudflare::new(SCRIPT, own).with_seed(seed).with_crash(crash.clone());
        let backups = MemoryBackups::new(cloud.clone(), crash.clone());
        Self {
            control,
            cloud,
            backups,
            clock: VirtualClock::new(),
            crash,
            remove_orphans: Cell::new(false),
            hosts: std::cell::RefCell::new(None),
            invocations: Cell::new(0),
            ids: Cell::new(0),
        }
    }

    /// A world whose invocations put tenant bindings on binding hosts of `capacity` each.
    pub async fn with_hosts(seed: u64, capacity: usize) -> Self {
        let world = Self::new(seed).await;
        world.use_hosts(capacity);
        world
    }

    /// Invocations from now on put tenant bindings on binding hosts of `capacity` each (the
    /// upgrade from the single-script layout, when tenants exist already).
    pub fn use_hosts(&self, capacity: usize) {
        *self.hosts.borrow_mut() = Some(HostsConfig { namespace: NAMESPACE.into(), capacity });
    }

    /// The control store, without crashes (for the test's own reads and writes).
    pub fn store(&self) -> ControlStore<MemorySql> {
        ControlStore::new(self.control.clone())
    }

    /// A new invocation of the Worker.
    pub fn invocation(&self) -> Lifecycle<FakePlatform> {
        let n = self.invocations.get() + 1;
        self.invocations.set(n);
        let api = Client::new(
            self.cloud.clone(),
            "https://api.cloudflare.invalid/client/v4",
            "account",
            ApiToken::new("token"),
            RetryPolicy::default(),
        );
        Lifecycle {
            store: ControlStore::new(Crashing { inner: self.control.clone(), crash: self.crash.clone() }),
            api,
            backups: self.backups.clone(),
            bindings: FakeBindings::snapshot(&self.cloud, NAMESPACE),
            clock: self.clock.clone(),
            settings: Settings {
                script: SCRIPT.into(),
                prefix: DatabasePrefix::parse(PREFIX).expect("a valid prefix"),
                holder: format!("invocation-{n}"),
                remove_orphans: self.remove_orphans.get(),
                migration_concurrency: 8,
                backups: Default::default(),
                hosts: self.hosts.borrow().clone(),
            },
        }
    }

    fn next_id(&self, what: &str) -> String {
        let n = self.ids.get() + 1;
        self.ids.set(n);
        format!("{what}-{n}")
    }

    /// What `POST /v1/tenants` writes before running the saga: the provisioning row and its
    /// create operation, in one batch. Returns the operation.
    pub async fn request_create(&self, slug: &str) -> OperationRow {
        let parsed = TenantSlug::parse(slug).expect("a valid slug");
        let prefix = DatabasePrefix::parse(PREFIX).expect("a valid prefix");
        let database = DatabaseName::for_tenant(&prefix, &parsed);
        let binding = BindingName::for_tenant(&parsed);
        let fingerprint = format!("fp-{slug}");
        let new = NewTenant {
            slug,
            display_name: slug,
            plan: Plan::Free,
            database_name: database.as_str(),
            binding_name: binding.as_str(),
            fingerprint: &fingerprint,
        };
        let input = CreateInput { admin_email: format!("admin@{slug}.test"), admin_password_hash: Some("hash".into()) };
        let input = serde_json::to_string(&input).expect("serializable");
        let store = self.store();
        let op_id = self.next_id("create");
        store
            .start_create(CreateStart::Insert(&new), slug, &fingerprint, &op_id, &input, &json!({}))
            .await
            .expect("the control store answers");
        store.open_operation_of(slug).await.expect("the control store answers").expect("the create is open")
    }

    /// What `DELETE /v1/tenants/{slug}` writes before running the saga. Returns the open delete.
    pub async fn request_delete(&self, slug: &str) -> Option<OperationRow> {
        let store = self.store();
        let op_id = self.next_id("delete");
        store.start_delete(slug, &op_id, &op_id).await.expect("the control store answers");
        store
            .open_operation_of(slug)
            .await
            .expect("the control store answers")
            .filter(|op| op.kind == OperationKind::Delete)
    }

    /// Runs the scheduled reconciler in fresh invocations until nothing is left open (or
    /// `max_passes`); returns the passes it took.
    pub async fn converge(&self, max_passes: u32) -> u32 {
        for pass in 1..=max_passes {
            let lc = self.invocation();
            // A pass that fails (an injected fault on the control plane's path) is just retried.
            let _ = lc.scheduled_pass().await;
            if self.settled().await {
                return pass;
            }
            // The next cron tick.
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        }
        max_passes
    }

    /// No open operation, no tenant mid-lifecycle, and the binding set exactly the wanted one.
    pub async fn settled(&self) -> bool {
        let store = self.store();
        let open = store.unfinished_operations(1).await.expect("the control store answers");
        let in_flight = store.in_flight().await.expect("the control store answers");
        open.is_empty() && in_flight == 0 && self.binding_drift().await.is_empty()
    }

    /// Where each tenant binding is, over every script: binding name -> [(script, database id)]
    /// (the main Worker is `""`; a host by its name).
    pub fn all_bindings(&self) -> BTreeMap<String, Vec<(String, String)>> {
        let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (name, id) in self.cloud.tenant_bindings() {
            out.entry(name).or_default().push((String::new(), id));
        }
        for host in self.cloud.namespace_scripts(NAMESPACE) {
            for (name, id) in self.cloud.tenant_bindings_of(&format!("{NAMESPACE}/{host}")) {
                out.entry(name).or_default().push((host.clone(), id));
            }
        }
        out
    }

    async fn binding_drift(&self) -> Vec<String> {
        let store = self.store();
        let named = |rows: Vec<crate::store::control::WantedBinding>| -> BTreeMap<String, String> {
            rows.into_iter()
                .filter_map(|w| {
                    Some((BindingName::for_tenant(&TenantSlug::parse(&w.slug).ok()?).to_string(), w.database_id))
                })
                .collect()
        };
        let main = named(store.wanted_bindings(self.clock_now()).await.expect("the control store answers"));
        let mut drift = compare("main", &main, &self.cloud.tenant_bindings().into_iter().collect());
        for host in store.hosts().await.expect("the control store answers") {
            let wanted = named(store.host_wanted(&host.name).await.expect("the control store answers").bindings);
            let bound = self.cloud.tenant_bindings_of(&format!("{NAMESPACE}/{}", host.name)).into_iter().collect();
            drift.extend(compare(&host.name, &wanted, &bound));
        }
        drift
    }

    /// The virtual clock's time, as the lifecycle sees it.
    fn clock_now(&self) -> f64 {
        use crate::store::ports::Clock;
        self.clock.now_ms()
    }

    /// Every invariant a converged fleet must hold, as the list of what is broken (empty: all
    /// hold). `expect_active` tenants must be active; every other tenant the test touched must be
    /// deleted or failed.
    pub async fn violations(&self) -> Vec<String> {
        let mut broken = Vec::new();
        let store = self.store();
        let tenants = store.list_tenants(None, "", 1_000_000).await.expect("the control store answers");
        let databases: BTreeSet<String> = self.cloud.database_names().into_iter().collect();
        let everywhere = self.all_bindings();
        let backup_keys: BTreeSet<String> = self.backups.keys().into_iter().collect();
        let now = self.clock_now();
        let mut owned = BTreeSet::new();
        for t in &tenants {
            let slug = TenantSlug::parse(&t.slug).expect("stored slugs are valid");
            let binding = BindingName::for_tenant(&slug).to_string();
            match t.status {
                TenantStatus::Active | TenantStatus::Suspended => {
                    owned.insert(t.database_name.clone());
                    let Some(id) = &t.database_id else {
                        broken.push(format!("{}: active without a database id", t.slug));
                        continue;
                    };
                    // Bound exactly once, where it is served from (and, for a grace period after a
                    // move, on the main Worker too).
                    let home = if t.on_host { t.host.clone().unwrap_or_default() } else { String::new() };
                    let mut places = everywhere.get(&binding).cloned().unwrap_or_default();
                    let grace = t.on_host && t.main_until.is_some_and(|u| (u as f64) > now);
                    places.retain(|(script, _)| !(grace && script.is_empty()));
                    if places != [(home.clone(), id.clone())] {
                        broken.push(format!("{}: active on {home:?} but {binding} is bound at {places:?}", t.slug));
                    }
                    match self.cloud.database(id) {
                        None => broken.push(format!("{}: active but its database {id} does not exist", t.slug)),
                        Some(db) => {
                            let stamp = tenant_db::stamp(&db).await.ok().flatten();
                            if stamp.as_deref() != Some(t.slug.as_str()) {
                                broken.push(format!("{}: its database is stamped {stamp:?}", t.slug));
                            }
                            let applied = migrate::applied(&db).await.unwrap_or_default();
                            if applied.len() != migrations::TENANT.len() {
                                broken.push(format!("{}: its database is at {} migrations", t.slug, applied.len()));
                            }
                            let admins: Vec<Count> = db
                                .all(sql!("SELECT count(*) AS n FROM users WHERE role = 'admin'"))
                                .await
                                .unwrap_or_default();
                            if admins.first().is_none_or(|c| c.n != 1) {
                                broken.push(format!("{}: has no admin", t.slug));
                            }
                        }
                    }
                    if t.schema_version != migrations::TENANT.len() as i64 {
                        broken.push(format!("{}: schema_version {}", t.slug, t.schema_version));
                    }
                }
                TenantStatus::Deleted => {
                    if databases.contains(&t.database_name) {
                        broken.push(format!("{}: deleted but its database still exists", t.slug));
                    }
                    if everywhere.contains_key(&binding) {
                        broken.push(format!("{}: deleted but still bound", t.slug));
                    }
                    if t.host.is_some() {
                        broken.push(format!("{}: deleted but still holds a slot on {:?}", t.slug, t.host));
                    }
                    if let Some(location) = &t.backup_location {
                        let key = location.trim_start_matches("r2://BACKUPS/");
                        if !backup_keys.contains(key) {
                            broken.push(format!("{}: its backup {location} is not in the bucket", t.slug));
                        }
                    }
                }
                TenantStatus::Failed => {
                    owned.insert(t.database_name.clone());
                }
                TenantStatus::Provisioning | TenantStatus::Deleting => {
                    owned.insert(t.database_name.clone());
                    broken.push(format!("{}: still {}", t.slug, t.status));
                }
            }
        }
        let control = DatabaseName::control_plane(&DatabasePrefix::parse(PREFIX).expect("a valid prefix"));
        for name in databases.iter().filter(|n| n.starts_with(PREFIX) && *n != control.as_str()) {
            if !owned.contains(name) {
                broken.push(format!("orphan database {name}"));
            }
        }
        // A set, not a scan per binding: 40,000 bindings against 50,000 tenants.
        let live: std::collections::HashSet<String> = tenants
            .iter()
            .filter(|t| !matches!(t.status, TenantStatus::Deleted))
            .map(|t| BindingName::for_tenant(&TenantSlug::parse(&t.slug).expect("valid")).to_string())
            .collect();
        for name in everywhere.keys() {
            let known = live.contains(name);
            if !known {
                broken.push(format!("binding {name} belongs to no tenant"));
            }
        }
        let capacity = self.hosts.borrow().as_ref().map_or(usize::MAX, |h| h.capacity);
        for host in store.hosts().await.expect("the control store answers") {
            let placed = tenants.iter().filter(|t| t.host.as_deref() == Some(host.name.as_str())).count();
            if host.used != placed as i64 {
                broken.push(format!("host {}: counts {} tenants, holds {placed}", host.name, host.used));
            }
            let bound = self.cloud.tenant_bindings_of(&format!("{NAMESPACE}/{}", host.name)).len();
            if bound > capacity || placed > capacity {
                broken.push(format!("host {}: {bound} bindings, {placed} tenants, over its cap {capacity}", host.name));
            }
        }
        for script in self.cloud.namespace_scripts(NAMESPACE) {
            if store.host(&script).await.expect("the control store answers").is_none() {
                broken.push(format!("orphan script {script}"));
            }
        }
        broken.extend(self.binding_drift().await);
        let open = store.unfinished_operations(10).await.expect("the control store answers");
        for op in open {
            broken.push(format!("operation {} ({}) on {} is still open", op.id, op.kind.as_str(), op.tenant_slug));
        }
        broken
    }
}

/// What separates `bound` from `wanted` on script `script`.
fn compare(script: &str, wanted: &BTreeMap<String, String>, bound: &BTreeMap<String, String>) -> Vec<String> {
    let mut drift = Vec::new();
    for (name, id) in wanted {
        match bound.get(name) {
            None => drift.push(format!("{script}: {name} is wanted but not bound")),
            Some(b) if b != id => drift.push(format!("{script}: {name} is bound to {b}, not {id}")),
            Some(_) => {}
        }
    }
    for name in bound.keys().filter(|n| !wanted.contains_key(*n)) {
        drift.push(format!("{script}: {name} is bound but not wanted"));
    }
    drift
}

#[derive(Deserialize)]
struct Count {
    n: i64,
}
