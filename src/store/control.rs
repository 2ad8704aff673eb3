//! The control plane's tables: the one place their SQL lives. Everything above (the admin API,
//! the lifecycle, the tenant lookup, the fleet passes) reads and writes them through
//! [`ControlStore`], over any [`Sql`]: the `CONTROL_DB` binding in the Worker, an in-memory SQLite
//! in native tests.
//!
//! Every rule that guards a write is decided by the write itself: status changes are
//! compare-and-set (`WHERE status IN (...)`), a tenant row and the operation that carries it are
//! written in one batch (one transaction), and a saga runner's writes to its operation are fenced
//! by its lease (`AND EXISTS (SELECT 1 FROM leases WHERE name = .. AND holder = ..)`), so a runner
//! that lost its lease (it stalled past the lease, another took over) changes nothing. The caller
//! learns from the returned flag whether its write happened.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::sql::{Outcome, Sql, SqlError, Statement};
use crate::core::audit_chain::Anchor;
use crate::core::lifecycle::{OperationKind, OperationState, Plan, Step, TenantStatus};
use crate::core::roles::RoleSpec;
use crate::sql;

mod restores;
mod usage;

pub use restores::{BackupRow, NewBackup, RestoreStart, SpareDatabase};
pub use usage::{TenantMonth, UsageRow};

type Result<T> = std::result::Result<T, SqlError>;

/// SQLite has no booleans: `0` / `1`.
fn flag<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    Ok(i64::deserialize(d)? != 0)
}

/// A JSON array stored as text (`operations.steps`).
fn json_text<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(d: D) -> std::result::Result<T, D::Error> {
    let text = String::deserialize(d)?;
    serde_json::from_str(&text).map_err(serde::de::Error::custom)
}

/// A row of `tenants`. The CHECK constraints keep `plan` and `status` to the values the enums
/// know.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantRow {
    pub slug: String,
    pub display_name: String,
    pub plan: Plan,
    pub status: TenantStatus,
    pub database_name: String,
    pub database_id: Option<String>,
    pub binding_name: String,
    pub schema_version: i64,
    pub status_message: Option<String>,
    pub backup_location: Option<String>,
    pub backup_bytes: Option<i64>,
    pub backup_sha256: Option<String>,
    pub last_error: Option<String>,
    #[serde(deserialize_with = "flag")]
    pub bind_wanted: bool,
    pub create_fingerprint: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub deleted_at: Option<String>,
    pub maintenance_message: Option<String>,
    pub maintenance_until: Option<String>,
    /// The binding host holding the tenant's slot (`None`: none).
    pub host: Option<String>,
    /// Requests reach the database through `host` (else through the main Worker's own binding).
    #[serde(deserialize_with = "flag")]
    pub on_host: bool,
    /// After a move to a host, the main Worker keeps the old binding until then (ms).
    pub main_until: Option<i64>,
    /// The last scheduled backup (ms), its last attempt, and that attempt's error.
    pub backed_up_at: Option<i64>,
    pub backup_tried_at: Option<i64>,
    pub backup_error: Option<String>,
    /// The restore operation running on the tenant (requests get 503 meanwhile), since when (ms).
    pub restoring: Option<String>,
    pub restoring_since: Option<i64>,
    /// The plan's end, the tenant's own quotas and its metered usage.
    #[serde(flatten)]
    pub terms: PlanTerms,
}

/// A row of `operations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperationRow {
    pub id: String,
    pub tenant_slug: String,
    pub kind: OperationKind,
    pub state: OperationState,
    /// The steps done so far, in the order they were done.
    #[serde(deserialize_with = "json_text")]
    pub steps: Vec<Step>,
    pub attempts: i64,
    pub last_error: Option<String>,
    /// The operation's input, as JSON text (a create's admin until it is seeded).
    pub input: String,
    pub next_step: Option<Step>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

/// What the request path needs of a tenant's row, with the fleet-wide maintenance read in the
/// same query.
#[derive(Debug, Clone, Deserialize)]
pub struct TenantRecord {
    pub slug: String,
    pub status: TenantStatus,
    pub plan: Plan,
    pub status_message: Option<String>,
    pub database_id: Option<String>,
    pub maintenance_message: Option<String>,
    pub maintenance_until: Option<String>,
    /// The fleet-wide maintenance (JSON `{message, until}`).
    pub fleet_maintenance: Option<String>,
    /// The binding host requests go through (`None`: the main Worker's own binding).
    pub host: Option<String>,
    /// A restore is running: requests get 503 until it is done.
    #[serde(default)]
    pub restoring: Option<String>,
    /// The plan's end, the tenant's own quotas and its metered usage: what quotas decide on.
    #[serde(flatten)]
    pub terms: PlanTerms,
}

/// A tenant's plan terms and metered usage, as both views of its row carry them (`core::plans`,
/// `core::usage`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PlanTerms {
    /// When the plan ends (RFC 3339): writes are refused from then on.
    #[serde(default)]
    pub plan_expires_at: Option<String>,
    /// The tenant's own quotas over its plan's (JSON).
    #[serde(default)]
    pub quotas: Option<String>,
    /// The month `month_requests` counts (`YYYY-MM`), as of the last flush of any isolate.
    #[serde(default)]
    pub usage_month: Option<String>,
    #[serde(default)]
    pub month_requests: i64,
    /// The database's size as last metered.
    #[serde(default)]
    pub size_bytes: Option<i64>,
}

impl PlanTerms {
    /// The plan's quotas with the tenant's own over them.
    pub fn quotas(&self, plan: Plan) -> crate::core::plans::Quotas {
        crate::core::plans::Quotas::effective(plan, self.quotas.as_deref())
    }

    /// API calls counted in `month` (`YYYY-MM`) as of the last flush: none when the running month
    /// is another.
    pub fn requests_in(&self, month: &str) -> u64 {
        if self.usage_month.as_deref() == Some(month) {
            self.month_requests.max(0) as u64
        } else {
            0
        }
    }

    /// When the plan ends, in milliseconds since the epoch.
    pub fn expires_ms(&self) -> Option<f64> {
        let at = chrono::DateTime::parse_from_rfc3339(self.plan_expires_at.as_deref()?).ok()?;
        Some(at.timestamp_millis() as f64)
    }

    /// The metered size in bytes.
    pub fn size(&self) -> Option<u64> {
        self.size_bytes.map(|s| s.max(0) as u64)
    }
}

/// A binding host (a row of `hosts`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct HostRow {
    pub name: String,
    pub seq: i64,
    pub state: String,
    pub used: i64,
    pub wanted_gen: i64,
    pub applied_gen: i64,
    pub code: Option<String>,
}

/// A host's wanted binding set and the generation it is of.
#[derive(Debug, Clone)]
pub struct HostWanted {
    pub generation: i64,
    pub bindings: Vec<WantedBinding>,
}

/// Which tenants `place` may put on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceFor {
    /// A tenant being created: it is served through the host from the start.
    Create,
    /// A tenant served through the main Worker's binding (the single-script layout) moving to a
    /// host: it keeps being served through the main Worker until `move_to_host`.
    Move,
}

/// A tenant whose binding should exist, with the database it binds.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct WantedBinding {
    pub slug: String,
    pub database_id: String,
}

/// What every tenant should have of the platform's entities.
#[derive(Debug, Clone)]
pub struct Entities {
    pub version: i64,
    pub roles: Vec<RoleSpec>,
}

/// Tenants in service per schema version.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct VersionCount {
    pub schema_version: i64,
    pub n: i64,
}

/// A tenant whose last migration failed.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MigrationFailure {
    pub slug: String,
    pub schema_version: i64,
    pub migration_error: String,
}

/// A tenant whose last sync of the platform's entities failed.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SyncFailure {
    pub slug: String,
    pub sync_error: String,
}

const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
const TENANT_COLUMNS: &str =
    "slug, display_name, plan, status, database_name, database_id, binding_name, schema_version, \
     status_message, backup_location, backup_bytes, backup_sha256, last_error, bind_wanted, create_fingerprint, \
     created_at, updated_at, deleted_at, maintenance_message, maintenance_until, host, on_host, main_until, \
     backed_up_at, backup_tried_at, backup_error, restoring, restoring_since, plan_expires_at, quotas, \
     usage_month, month_requests, size_bytes";
const OP_COLUMNS: &str =
    "id, tenant_slug, kind, state, steps, attempts, last_error, input, next_step, created_at, updated_at, finished_at";
/// An operation still to be run.
const OPEN: &str = "state IN ('pending', 'running')";

/// The columns of a `hosts` row ([`HostRow`]).
const HOST_COLUMNS: &str = "name, seq, state, used, wanted_gen, applied_gen, code";
/// The host requests for a tenant go through: its host once it is on it, else NULL (the main
/// Worker's own binding).
const SERVED_HOST: &str = "CASE WHEN on_host = 1 THEN host END AS host";

/// A tenant's `host` column.
#[derive(Deserialize)]
struct Host {
    host: Option<String>,
}

/// Marks the host of tenant `slug` as having a new wanted binding set, when the statement before
/// it in the batch changed a row.
fn host_set_changed(slug: &str) -> Statement {
    sql!(
        "UPDATE hosts SET wanted_gen = wanted_gen + 1 WHERE name = (SELECT host FROM tenants WHERE slug = ?1) \
         AND changes() > 0",
        slug
    )
}

/// Whether statement `index` of a batch changed a row.
fn changed_in(results: &[Outcome], index: usize) -> bool {
    results.get(index).is_some_and(Outcome::changed)
}

fn step_name(step: Step) -> &'static str {
    step.as_str()
}

/// A quoted SQL list of statuses (the names are the enum's own, never input).
fn status_list(statuses: &[TenantStatus]) -> String {
    let list: Vec<String> = statuses.iter().map(|st| format!("'{}'", st.as_str())).collect();
    if list.is_empty() {
        "NULL".to_owned()
    } else {
        list.join(", ")
    }
}

pub struct NewTenant<'a> {
    pub slug: &'a str,
    pub display_name: &'a str,
    pub plan: Plan,
    pub database_name: &'a str,
    pub binding_name: &'a str,
    pub fingerprint: &'a str,
}

/// How a create request starts, chosen from the row the handler read. The statement re-checks
/// its own condition, so a stale read can only make it do nothing, never the wrong thing.
pub enum CreateStart<'a> {
    /// No row: insert a `provisioning` row (nothing if the slug was taken meanwhile).
    Insert(&'a NewTenant<'a>),
    /// A deleted tenant's tombstone, replaced by a fresh `provisioning` row (explicit recreate).
    ReplaceTombstone(&'a NewTenant<'a>),
    /// The same create, failed: back to `provisioning`.
    Resume,
    /// The same create, still provisioning: only make sure it has its operation.
    Join,
}

/// What an operator's `PATCH /v1/tenants/{slug}` changes; `None` leaves a field as it is.
#[derive(Default)]
pub struct TenantChanges<'a> {
    pub name: Option<&'a str>,
    pub plan: Option<Plan>,
    /// A status an operator may ask for (`active` or `suspended`), with its message.
    pub status: Option<(TenantStatus, Option<&'a str>)>,
    /// `Some(None)` lifts the tenant's maintenance; `Some(Some((message, until)))` sets it.
    pub maintenance: Option<Option<(&'a str, Option<&'a str>)>>,
    /// `Some(None)` clears the plan's end; `Some(Some(at))` sets it (RFC 3339).
    pub plan_expires_at: Option<Option<&'a str>>,
    /// `Some(None)` drops the tenant's own quotas; `Some(Some(json))` sets them.
    pub quotas: Option<Option<&'a str>>,
}

/// A change to one system role.
pub enum RoleWrite<'a> {
    /// A new role; nothing when the name is taken.
    Create {
        description: &'a str,
        permissions: &'a [String],
    },
    /// Changes an existing role; `None` keeps a field.
    Update {
        description: Option<&'a str>,
        permissions: Option<&'a [String]>,
    },
    Delete,
}

/// The lease a saga runner holds on its tenant (`tenant:{slug}`). Every write the runner makes
/// to its operation carries [`Fence::sql`], so it lands only while the runner still holds it.
pub struct Fence<'a> {
    pub lease: &'a str,
    pub holder: &'a str,
}

impl Fence<'_> {
    /// `EXISTS (...)` with the lease name and holder at parameters `?{first}` and `?{first + 1}`.
    fn sql(&self, first: usize) -> String {
        format!("EXISTS (SELECT 1 FROM leases WHERE name = ?{first} AND holder = ?{})", first + 1)
    }

    /// `statement` with the fence's two parameters appended.
    fn bind(&self, statement: Statement) -> Statement {
        statement.bind(self.lease).bind(self.holder)
    }
}

/// The control plane's tables over `S`.
#[derive(Clone)]
pub struct ControlStore<S> {
    db: S,
}

impl<S: Sql> ControlStore<S> {
    pub fn new(db: S) -> Self {
        Self { db }
    }

    /// The database underneath (for its migration ledger).
    pub fn sql(&self) -> &S {
        &self.db
    }

    // --- tenants ------------------------------------------------------------------------------

    pub async fn tenant(&self, slug: &str) -> Result<Option<TenantRow>> {
        self.db.first(sql!(format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE slug = ?1"), slug)).await
    }

    /// The request path's view of a tenant, one query.
    pub async fn tenant_record(&self, slug: &str) -> Result<Option<TenantRecord>> {
        self.db
            .first(sql!(
                format!(
                    "SELECT slug, status, plan, status_message, database_id, maintenance_message, maintenance_until, \
                     (SELECT value FROM platform WHERE key = 'maintenance') AS fleet_maintenance, \
                     {SERVED_HOST}, restoring, plan_expires_at, quotas, usage_month, month_requests, size_bytes \
                     FROM tenants WHERE slug = ?1"
                ),
                slug
            ))
            .await
    }

    /// Tenants ordered by slug, after `after`, optionally of one status.
    pub async fn list_tenants(&self, status: Option<TenantStatus>, after: &str, limit: u32) -> Result<Vec<TenantRow>> {
        self.db
            .all(sql!(
                format!(
                    "SELECT {TENANT_COLUMNS} FROM tenants WHERE slug > ?1 AND (?2 IS NULL OR status = ?2) \
                     ORDER BY slug LIMIT ?3"
                ),
                after,
                status.map(TenantStatus::as_str),
                limit
            ))
            .await
    }

    /// Every tenant whose binding the main Worker should hold (and has a database to bind), by
    /// slug: those served through it, and those moved to a host less than a grace period ago
    /// (`main_until` after `now_ms`).
    pub async fn wanted_bindings(&self, now_ms: f64) -> Result<Vec<WantedBinding>> {
        self.db
            .all(sql!(
                "SELECT slug, database_id FROM tenants WHERE bind_wanted = 1 AND database_id IS NOT NULL \
                 AND (on_host = 0 OR main_until > ?1) ORDER BY slug",
                now_ms as i64
            ))
            .await
    }

    // --- binding hosts ------------------------------------------------------------------------

    /// Puts tenant `slug` on the first host (by number) with a free slot, in one batch: the
    /// tenant's row names the host and the host's count goes up only if the row changed, so two
    /// placements can never both take a host's last slot. When every host is full a new host row
    /// (`creating`) is added first, numbered one past the last (two racing placements add one:
    /// the number is unique). Returns the tenant's host (already placed: unchanged), or `None`
    /// when the tenant cannot be placed (not in a state to be).
    pub async fn place(&self, slug: &str, script: &str, capacity: usize, purpose: PlaceFor) -> Result<Option<String>> {
        let (eligible, on_host) = match purpose {
            PlaceFor::Create => ("status = 'provisioning'", 1_i64),
            PlaceFor::Move => ("on_host = 0 AND bind_wanted = 1 AND status IN ('active', 'suspended')", 0),
        };
        let batch = vec![
            sql!(
                format!(
                    "INSERT INTO hosts (name, seq) SELECT printf('%s-host-%04d', ?2, n), n \
                     FROM (SELECT coalesce(max(seq), 0) + 1 AS n FROM hosts) \
                     WHERE NOT EXISTS (SELECT 1 FROM hosts WHERE used < ?3) \
                     AND EXISTS (SELECT 1 FROM tenants WHERE slug = ?1 AND host IS NULL AND {eligible}) \
                     ON CONFLICT DO NOTHING"
                ),
                slug,
                script,
                capacity
            ),
            sql!(
                format!(
                    "UPDATE tenants SET host = (SELECT name FROM hosts WHERE used < ?2 ORDER BY seq LIMIT 1), \
                     on_host = ?3, updated_at = {NOW} WHERE slug = ?1 AND host IS NULL AND {eligible} \
                     AND EXISTS (SELECT 1 FROM hosts WHERE used < ?2)"
                ),
                slug,
                capacity,
                on_host
            ),
            sql!(
                "UPDATE hosts SET used = used + 1, wanted_gen = wanted_gen + 1 \
                 WHERE name = (SELECT host FROM tenants WHERE slug = ?1) AND changes() > 0",
                slug
            ),
            sql!("SELECT host FROM tenants WHERE slug = ?1", slug),
        ];
        let results = self.db.batch(batch).await?;
        Ok(results.last().map(|r| r.first::<Host>()).transpose()?.flatten().and_then(|h| h.host))
    }

    /// Gives tenant `slug`'s host slot back and stops wanting its binding, in one batch (the
    /// host's count goes down once: only when the row still named it). Returns the host it was
    /// on, whose binding set must now be reconciled.
    pub async fn release_host(&self, slug: &str) -> Result<Option<String>> {
        let batch = vec![
            sql!("SELECT host FROM tenants WHERE slug = ?1", slug),
            sql!(
                "UPDATE hosts SET used = used - 1, wanted_gen = wanted_gen + 1 \
                 WHERE name = (SELECT host FROM tenants WHERE slug = ?1)",
                slug
            ),
            sql!(
                format!("UPDATE tenants SET host = NULL, bind_wanted = 0, updated_at = {NOW} WHERE slug = ?1 AND host IS NOT NULL"),
                slug
            ),
        ];
        let results = self.db.batch(batch).await?;
        Ok(results.first().map(|r| r.first::<Host>()).transpose()?.flatten().and_then(|h| h.host))
    }

    /// A moved tenant is now served through its host; the main Worker keeps its old binding until
    /// `main_until_ms`. `false` when the tenant is not on `host` waiting to move.
    pub async fn move_to_host(&self, slug: &str, host: &str, main_until_ms: f64) -> Result<bool> {
        self.db
            .changed(sql!(
                format!(
                    "UPDATE tenants SET on_host = 1, main_until = ?3, updated_at = {NOW} \
                     WHERE slug = ?1 AND host = ?2 AND on_host = 0 AND bind_wanted = 1"
                ),
                slug,
                host,
                main_until_ms as i64
            ))
            .await
    }

    /// Tenants still served through the main Worker's own binding (to move to hosts), by slug.
    pub async fn tenants_on_main(&self, limit: u32) -> Result<Vec<TenantRow>> {
        self.db
            .all(sql!(
                format!(
                    "SELECT {TENANT_COLUMNS} FROM tenants WHERE on_host = 0 AND bind_wanted = 1 \
                     AND status IN ('active', 'suspended') ORDER BY slug LIMIT ?1"
                ),
                limit
            ))
            .await
    }

    /// Every host, by number.
    pub async fn hosts(&self) -> Result<Vec<HostRow>> {
        self.db.all(sql!(format!("SELECT {HOST_COLUMNS} FROM hosts ORDER BY seq"))).await
    }

    pub async fn host(&self, name: &str) -> Result<Option<HostRow>> {
        self.db.first(sql!(format!("SELECT {HOST_COLUMNS} FROM hosts WHERE name = ?1"), name)).await
    }

    /// Hosts whose wanted binding set changed since their last converged reconcile.
    pub async fn dirty_hosts(&self) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Name {
            name: String,
        }
        let rows: Vec<Name> =
            self.db.all(sql!("SELECT name FROM hosts WHERE applied_gen < wanted_gen ORDER BY seq")).await?;
        Ok(rows.into_iter().map(|r| r.name).collect())
    }

    /// A host's script is uploaded with code `code`.
    pub async fn set_host_ready(&self, name: &str, code: &str) -> Result<()> {
        self.db.run(sql!("UPDATE hosts SET state = 'ready', code = ?2 WHERE name = ?1", name, code)).await.map(drop)
    }

    /// Host `name`'s wanted bindings, read with their generation in one transaction.
    pub async fn host_wanted(&self, name: &str) -> Result<HostWanted> {
        #[derive(Deserialize)]
        struct Gen {
            wanted_gen: i64,
        }
        let results = self
            .db
            .batch(vec![
                sql!("SELECT wanted_gen FROM hosts WHERE name = ?1", name),
                sql!(
                    "SELECT slug, database_id FROM tenants WHERE host = ?1 AND bind_wanted = 1 \
                     AND database_id IS NOT NULL ORDER BY slug",
                    name
                ),
            ])
            .await?;
        let mut results = results.into_iter();
        let generation = results.next().map(|r| r.first::<Gen>()).transpose()?.flatten().map_or(0, |g| g.wanted_gen);
        let bindings = results.next().map(Outcome::into_rows).transpose()?.unwrap_or_default();
        Ok(HostWanted { generation, bindings })
    }

    /// Host `name` held exactly its wanted set of generation `generation`.
    pub async fn set_host_applied(&self, name: &str, generation: i64) -> Result<()> {
        self.db
            .run(sql!("UPDATE hosts SET applied_gen = ?2 WHERE name = ?1 AND applied_gen < ?2", name, generation))
            .await
            .map(drop)
    }

    /// Marks host `name` as needing a reconcile (its binding set was found to drift).
    pub async fn touch_host(&self, name: &str) -> Result<()> {
        self.db.run(sql!("UPDATE hosts SET wanted_gen = wanted_gen + 1 WHERE name = ?1", name)).await.map(drop)
    }

    /// How many tenants are mid-lifecycle (`provisioning` or `deleting`).
    pub async fn in_flight(&self) -> Result<i64> {
        #[derive(Deserialize)]
        struct Count {
            n: i64,
        }
        let count: Option<Count> = self
            .db
            .first(sql!("SELECT count(*) AS n FROM tenants WHERE status IN ('provisioning', 'deleting')"))
            .await?;
        Ok(count.map_or(0, |c| c.n))
    }

    /// Database names every non-deleted tenant owns, and the spare databases of restores (for the
    /// orphan scan; a spare is dropped by [`Self::spares_to_drop`]'s sweep, not as an orphan).
    pub async fn owned_database_names(&self) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Name {
            database_name: String,
        }
        let rows: Vec<Name> = self
            .db
            .all(sql!(
                "SELECT database_name FROM tenants WHERE status != 'deleted' \
                 UNION SELECT name AS database_name FROM spare_databases"
            ))
            .await?;
        Ok(rows.into_iter().map(|r| r.database_name).collect())
    }

    /// Starts a create in one batch (one transaction): the tenant row's change, the create
    /// operation and the audit row. The operation is opened only when the tenant is then
    /// `provisioning` with this create's `fingerprint` and has no open operation, so a crash can
    /// never leave a provisioning tenant without the operation that finishes it, and identical
    /// concurrent creates open exactly one. Returns whether this call opened the operation.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_create(
        &self,
        start: CreateStart<'_>,
        slug: &str,
        fingerprint: &str,
        op_id: &str,
        input: &str,
        audit_detail: &Value,
    ) -> Result<bool> {
        let action = match &start {
            CreateStart::ReplaceTombstone(_) => "tenant.recreate",
            _ => "tenant.create",
        };
        let mut batch = Vec::new();
        match start {
            CreateStart::Insert(t) => batch.push(sql!(
                "INSERT INTO tenants (slug, display_name, plan, status, database_name, binding_name, create_fingerprint) \
                 VALUES (?1, ?2, ?3, 'provisioning', ?4, ?5, ?6) ON CONFLICT (slug) DO NOTHING",
                t.slug,
                t.display_name,
                t.plan.as_str(),
                t.database_name,
                t.binding_name,
                t.fingerprint
            )),
            CreateStart::ReplaceTombstone(t) => batch.push(sql!(
                format!(
                    "UPDATE tenants SET display_name = ?2, plan = ?3, status = 'provisioning', database_id = NULL, \
                     schema_version = 0, status_message = NULL, backup_location = NULL, backup_bytes = NULL, \
                     backup_sha256 = NULL, last_error = NULL, bind_wanted = 0, create_fingerprint = ?4, deleted_at = NULL, \
                     migration_error = NULL, synced_version = 0, sync_error = NULL, maintenance_message = NULL, \
                     maintenance_until = NULL, host = NULL, on_host = 0, main_until = NULL, usage_month = NULL, \
                     month_requests = 0, size_bytes = NULL, plan_expires_at = NULL, quotas = NULL, created_at = {NOW}, \
                     updated_at = {NOW} WHERE slug = ?1 AND status = 'deleted'"
                ),
                t.slug,
                t.display_name,
                t.plan.as_str(),
                t.fingerprint
            )),
            CreateStart::Resume => batch.push(sql!(
                format!(
                    "UPDATE tenants SET status = 'provisioning', status_message = NULL, last_error = NULL, updated_at = {NOW} \
                     WHERE slug = ?1 AND status = 'failed' AND create_fingerprint = ?2"
                ),
                slug,
                fingerprint
            )),
            CreateStart::Join => {}
        }
        batch.push(sql!(
            "INSERT INTO operations (id, tenant_slug, kind, state, input, next_step) \
             SELECT ?1, ?2, 'create', 'pending', ?3, ?4 WHERE EXISTS \
             (SELECT 1 FROM tenants WHERE slug = ?2 AND status = 'provisioning' AND create_fingerprint = ?5) \
             ON CONFLICT DO NOTHING",
            op_id,
            slug,
            input,
            step_name(OperationKind::Create.steps()[0]),
            fingerprint
        ));
        let opened = batch.len() - 1;
        batch.push(audit_if_changed("admin", action, Some(slug), op_id, audit_detail));
        let results = self.db.batch(batch).await?;
        Ok(changed_in(&results, opened))
    }

    /// Starts (or joins) a delete in one batch: the tenant moves to `deleting` from any status
    /// but `deleted`, an open create is closed as superseded, and a delete operation is opened
    /// unless one is open. Nothing of it happens unless the tenant is then `deleting`. Returns
    /// whether this call moved the tenant to `deleting`.
    pub async fn start_delete(&self, slug: &str, op_id: &str, request_id: &str) -> Result<bool> {
        let deleting = "EXISTS (SELECT 1 FROM tenants WHERE slug = ?1 AND status = 'deleting')";
        let batch = vec![
            // The audit row first, so it can say what the tenant was; only when it will move.
            sql!(
                "INSERT INTO audit_log (actor, action, tenant_slug, request_id, detail) \
                 SELECT 'admin', 'tenant.delete', slug, ?2, json_object('from', status) FROM tenants \
                 WHERE slug = ?1 AND status IN ('provisioning', 'active', 'suspended', 'failed')",
                slug,
                request_id
            ),
            sql!(
                format!(
                    "UPDATE tenants SET status = 'deleting', status_message = NULL, restoring = NULL, \
                     restoring_since = NULL, updated_at = {NOW} \
                     WHERE slug = ?1 AND status IN ('provisioning', 'active', 'suspended', 'failed')"
                ),
                slug
            ),
            sql!(
                format!(
                    "UPDATE operations SET state = 'failed', last_error = 'superseded by a delete', next_step = NULL, \
                     finished_at = {NOW}, updated_at = {NOW} \
                     WHERE tenant_slug = ?1 AND kind != 'delete' AND {OPEN} AND {deleting}"
                ),
                slug
            ),
            open_delete(slug, op_id),
        ];
        let results = self.db.batch(batch).await?;
        Ok(changed_in(&results, 1))
    }

    /// Applies an operator's changes in one statement, with its audit row in the same batch. The
    /// statement holds the rules: never on a deleted tenant; a status only from a status an
    /// operator may move it from ([`TenantStatus::operator_sources`]: suspend and resume, never a
    /// saga's move), and `active` only for a tenant whose binding is wanted. `None` when nothing
    /// matched (the caller re-reads to say why).
    pub async fn update_tenant(
        &self,
        slug: &str,
        changes: &TenantChanges<'_>,
        request_id: &str,
        audit_detail: &Value,
    ) -> Result<Option<TenantRow>> {
        let (status, message) = changes.status.map_or((None, None), |(st, m)| (Some(st), m));
        let sources = status.map_or_else(String::new, |to| {
            // A status no operator may ask for matches nothing.
            format!(" AND status IN ({})", status_list(&TenantStatus::operator_sources(to)))
        });
        let (set_maintenance, maintenance) = match changes.maintenance {
            None => (false, None),
            Some(m) => (true, m),
        };
        let update = sql!(
            format!(
                "UPDATE tenants SET display_name = COALESCE(?2, display_name), plan = COALESCE(?3, plan), \
                 status = COALESCE(?4, status), status_message = CASE WHEN ?4 IS NULL THEN status_message ELSE ?5 END, \
                 maintenance_message = CASE WHEN ?6 THEN ?7 ELSE maintenance_message END, \
                 maintenance_until = CASE WHEN ?6 THEN ?8 ELSE maintenance_until END, \
                 plan_expires_at = CASE WHEN ?9 THEN ?10 ELSE plan_expires_at END, \
                 quotas = CASE WHEN ?11 THEN ?12 ELSE quotas END, updated_at = {NOW} \
                 WHERE slug = ?1 AND status != 'deleted'{sources} AND (?4 IS NOT 'active' OR bind_wanted = 1) \
                 RETURNING {TENANT_COLUMNS}"
            ),
            slug,
            changes.name,
            changes.plan.map(Plan::as_str),
            status.map(TenantStatus::as_str),
            message,
            set_maintenance,
            maintenance.map(|m| m.0),
            maintenance.and_then(|m| m.1),
            changes.plan_expires_at.is_some(),
            changes.plan_expires_at.flatten(),
            changes.quotas.is_some(),
            changes.quotas.flatten()
        );
        let audit = audit_if_changed("admin", "tenant.update", Some(slug), request_id, audit_detail);
        let results = self.db.batch(vec![update, audit]).await?;
        match results.first() {
            Some(outcome) => outcome.first(),
            None => Ok(None),
        }
    }

    pub async fn set_database(&self, slug: &str, database_id: &str) -> Result<()> {
        self.db
            .run(sql!(
                format!("UPDATE tenants SET database_id = ?2, updated_at = {NOW} WHERE slug = ?1"),
                slug,
                database_id
            ))
            .await
            .map(drop)
    }

    /// Sets `bind_wanted` only while the tenant is in `status` (a create that lost a race with a
    /// delete must not bind again).
    pub async fn set_bind_wanted_if(&self, slug: &str, wanted: bool, status: TenantStatus) -> Result<bool> {
        let results = self
            .db
            .batch(vec![
                sql!(
                    format!("UPDATE tenants SET bind_wanted = ?2, updated_at = {NOW} WHERE slug = ?1 AND status = ?3"),
                    slug,
                    wanted,
                    status.as_str()
                ),
                // The tenant's host (if any) has a new wanted set.
                host_set_changed(slug),
            ])
            .await?;
        Ok(changed_in(&results, 0))
    }

    pub async fn set_schema_version(&self, slug: &str, version: usize) -> Result<()> {
        self.db
            .run(sql!(
                format!("UPDATE tenants SET schema_version = ?2, updated_at = {NOW} WHERE slug = ?1"),
                slug,
                version
            ))
            .await
            .map(drop)
    }

    pub async fn set_error(&self, slug: &str, error: Option<&str>) -> Result<()> {
        self.db
            .run(sql!(format!("UPDATE tenants SET last_error = ?2, updated_at = {NOW} WHERE slug = ?1"), slug, error))
            .await
            .map(drop)
    }

    pub async fn set_backup(&self, slug: &str, location: &str, bytes: usize, sha256: &str) -> Result<()> {
        self.db
            .run(sql!(
                format!(
                    "UPDATE tenants SET backup_location = ?2, backup_bytes = ?3, backup_sha256 = ?4, updated_at = {NOW} \
                     WHERE slug = ?1"
                ),
                slug,
                location,
                bytes,
                sha256
            ))
            .await
            .map(drop)
    }

    // --- fleet: migrations and entity sync ------------------------------------------------------

    /// Up to `limit` tenants in service after slug `after` that are behind: below schema
    /// `latest`, below entity version `entities`, or with a recorded failure.
    pub async fn tenants_behind(
        &self,
        after: &str,
        latest: usize,
        entities: i64,
        limit: u32,
    ) -> Result<Vec<(String, Option<String>)>> {
        #[derive(Deserialize)]
        struct Slug {
            slug: String,
            host: Option<String>,
        }
        let rows: Vec<Slug> = self
            .db
            .all(sql!(
                format!(
                    "SELECT slug, {SERVED_HOST} FROM tenants WHERE status IN ('active', 'suspended') AND slug > ?1 \
                     AND (schema_version < ?2 OR migration_error IS NOT NULL OR synced_version < ?4 OR sync_error IS NOT NULL) \
                     ORDER BY slug LIMIT ?3"
                ),
                after,
                latest,
                limit,
                entities
            ))
            .await?;
        Ok(rows.into_iter().map(|r| (r.slug, r.host)).collect())
    }

    /// Records a tenant's migration outcome: the version only ever moves forward here, and the
    /// error (or `None`: up to date) replaces the last one.
    pub async fn record_migration(&self, slug: &str, version: usize, error: Option<&str>) -> Result<()> {
        self.db
            .run(sql!(
                format!(
                    "UPDATE tenants SET schema_version = MAX(schema_version, ?2), migration_error = ?3, \
                     updated_at = {NOW} WHERE slug = ?1"
                ),
                slug,
                version,
                error
            ))
            .await
            .map(drop)
    }

    /// Records a tenant's entity sync outcome; a failure stays until a later sync succeeds.
    pub async fn record_sync(&self, slug: &str, version: i64, error: Option<&str>) -> Result<()> {
        let statement = match error {
            None => sql!("UPDATE tenants SET synced_version = ?2, sync_error = NULL WHERE slug = ?1", slug, version),
            Some(e) => sql!("UPDATE tenants SET sync_error = ?2 WHERE slug = ?1", slug, e),
        };
        self.db.run(statement).await.map(drop)
    }

    /// Tenants in service per schema version.
    pub async fn version_counts(&self) -> Result<Vec<VersionCount>> {
        self.db
            .all(sql!(
                "SELECT schema_version, count(*) AS n FROM tenants WHERE status IN ('active', 'suspended') \
                 GROUP BY schema_version ORDER BY schema_version"
            ))
            .await
    }

    /// Up to 500 tenants in service whose last migration failed, by slug.
    pub async fn migration_failures(&self) -> Result<Vec<MigrationFailure>> {
        self.db
            .all(sql!(
                "SELECT slug, schema_version, migration_error FROM tenants WHERE status IN ('active', 'suspended') \
                 AND migration_error IS NOT NULL ORDER BY slug LIMIT 500"
            ))
            .await
    }

    /// Up to 500 tenants in service whose last entity sync failed, by slug.
    pub async fn sync_failures(&self) -> Result<Vec<SyncFailure>> {
        self.db
            .all(sql!(
                "SELECT slug, sync_error FROM tenants WHERE status IN ('active', 'suspended') \
                 AND sync_error IS NOT NULL ORDER BY slug LIMIT 500"
            ))
            .await
    }

    // --- platform state and settings defaults ----------------------------------------------------

    pub async fn platform_value(&self, key: &str) -> Result<Option<String>> {
        #[derive(Deserialize)]
        struct V {
            value: String,
        }
        Ok(self.db.first::<V>(sql!("SELECT value FROM platform WHERE key = ?1", key)).await?.map(|v| v.value))
    }

    /// Sets (or with `None` removes) a platform value.
    pub async fn set_platform_value(&self, key: &str, value: Option<&str>) -> Result<()> {
        let statement = match value {
            Some(v) => sql!(
                "INSERT INTO platform (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                key,
                v
            ),
            None => sql!("DELETE FROM platform WHERE key = ?1", key),
        };
        self.db.run(statement).await.map(drop)
    }

    /// The default settings, `{key: value}`.
    pub async fn settings_defaults(&self) -> Result<serde_json::Map<String, Value>> {
        #[derive(Deserialize)]
        struct Row {
            key: String,
            value: String,
        }
        let rows: Vec<Row> = self.db.all(sql!("SELECT key, value FROM settings_defaults ORDER BY key")).await?;
        Ok(rows.into_iter().map(|r| (r.key, serde_json::from_str(&r.value).unwrap_or(Value::Null))).collect())
    }

    /// Applies `(key, Some(json))` upserts and `(key, None)` removals in one batch.
    pub async fn set_settings_defaults(&self, changes: &[(String, Option<String>)]) -> Result<()> {
        let batch = changes
            .iter()
            .map(|(key, value)| match value {
                Some(v) => sql!(
                    format!(
                        "INSERT INTO settings_defaults (key, value) VALUES (?1, ?2) \
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = {NOW}"
                    ),
                    key,
                    v
                ),
                None => sql!("DELETE FROM settings_defaults WHERE key = ?1", key),
            })
            .collect();
        self.db.batch(batch).await.map(drop)
    }

    // --- system roles -------------------------------------------------------------------------

    /// The platform's roles, by name.
    pub async fn roles(&self) -> Result<Vec<RoleSpec>> {
        #[derive(Deserialize)]
        struct Row {
            name: String,
            description: String,
            permissions: String,
        }
        let rows: Vec<Row> =
            self.db.all(sql!("SELECT name, description, permissions FROM roles ORDER BY name")).await?;
        Ok(rows
            .into_iter()
            .map(|r| RoleSpec {
                name: r.name,
                description: r.description,
                permissions: serde_json::from_str(&r.permissions).unwrap_or_default(),
            })
            .collect())
    }

    /// The version of the platform's entities (roles); bumped by every change.
    pub async fn entity_version(&self) -> Result<i64> {
        Ok(self.platform_value("entity_version").await?.and_then(|v| v.parse().ok()).unwrap_or(0))
    }

    /// The platform's entities and their version.
    pub async fn entities(&self) -> Result<Entities> {
        Ok(Entities { version: self.entity_version().await?, roles: self.roles().await? })
    }

    /// Writes a role, bumps the entity version and audits, in one batch; the bump and the audit
    /// happen only when the write changed a row. Returns whether it did: `false` means the name
    /// is taken (create) or there is no such role (update, delete).
    pub async fn write_role(
        &self,
        name: &str,
        write: RoleWrite<'_>,
        request_id: &str,
        audit_detail: &Value,
    ) -> Result<bool> {
        let json = |p: &[String]| serde_json::to_string(p).unwrap_or_else(|_| "[]".into());
        let (statement, action) = match write {
            RoleWrite::Create { description, permissions } => (
                sql!(
                    "INSERT INTO roles (name, description, permissions) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
                    name,
                    description,
                    json(permissions)
                ),
                "role.create",
            ),
            RoleWrite::Update { description, permissions } => (
                sql!(
                    format!(
                        "UPDATE roles SET description = COALESCE(?2, description), \
                         permissions = COALESCE(?3, permissions), updated_at = {NOW} WHERE name = ?1"
                    ),
                    name,
                    description,
                    permissions.map(json)
                ),
                "role.update",
            ),
            RoleWrite::Delete => (sql!("DELETE FROM roles WHERE name = ?1", name), "role.delete"),
        };
        let bump = sql!(
            "UPDATE platform SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) \
             WHERE key = 'entity_version' AND changes() > 0"
        );
        let audit = sql!(
            "INSERT INTO audit_log (actor, action, tenant_slug, request_id, detail) \
             SELECT 'admin', ?1, NULL, ?2, ?3 WHERE changes() > 0",
            action,
            request_id,
            audit_detail.to_string()
        );
        let results = self.db.batch(vec![statement, bump, audit]).await?;
        Ok(changed_in(&results, 0))
    }

    // --- operations ---------------------------------------------------------------------------

    pub async fn operation(&self, id: &str) -> Result<Option<OperationRow>> {
        self.db.first(sql!(format!("SELECT {OP_COLUMNS} FROM operations WHERE id = ?1"), id)).await
    }

    pub async fn open_operation_of(&self, slug: &str) -> Result<Option<OperationRow>> {
        self.db
            .first(sql!(format!("SELECT {OP_COLUMNS} FROM operations WHERE tenant_slug = ?1 AND {OPEN}"), slug))
            .await
    }

    /// The tenant's open operation, or else its latest one.
    pub async fn current_operation_of(&self, slug: &str) -> Result<Option<OperationRow>> {
        match self.open_operation_of(slug).await? {
            Some(op) => Ok(Some(op)),
            None => Ok(self.list_operations(slug, 1).await?.into_iter().next()),
        }
    }

    pub async fn list_operations(&self, slug: &str, limit: u32) -> Result<Vec<OperationRow>> {
        self.db
            .all(sql!(
                format!(
                    "SELECT {OP_COLUMNS} FROM operations WHERE tenant_slug = ?1 ORDER BY created_at DESC, id LIMIT ?2"
                ),
                slug,
                limit
            ))
            .await
    }

    /// Open operations, least recently touched first.
    pub async fn unfinished_operations(&self, limit: u32) -> Result<Vec<OperationRow>> {
        self.db
            .all(sql!(format!("SELECT {OP_COLUMNS} FROM operations WHERE {OPEN} ORDER BY updated_at LIMIT ?1"), limit))
            .await
    }

    /// Records `done` and what comes next. `false` when the write did not land: the operation was
    /// closed meanwhile (a delete superseded it) or the runner no longer holds `fence`.
    pub async fn record_step(&self, op_id: &str, fence: &Fence<'_>, done: &[Step], next: Option<Step>) -> Result<bool> {
        let steps = serde_json::to_string(done).map_err(|e| SqlError::new(e.to_string()))?;
        self.db
            .changed(fence.bind(sql!(
                format!(
                    "UPDATE operations SET state = 'running', steps = ?2, next_step = ?3, updated_at = {NOW} \
                     WHERE id = ?1 AND {OPEN} AND {}",
                    fence.sql(4)
                ),
                op_id,
                steps,
                next.map(step_name)
            )))
            .await
    }

    /// Records a failed attempt; the operation stays open for the next try. Fenced like
    /// [`Self::record_step`].
    pub async fn record_failure(&self, op_id: &str, fence: &Fence<'_>, error: &str) -> Result<bool> {
        self.db
            .changed(fence.bind(sql!(
                format!(
                    "UPDATE operations SET state = 'running', attempts = attempts + 1, last_error = ?2, updated_at = {NOW} \
                     WHERE id = ?1 AND {OPEN} AND {}",
                    fence.sql(3)
                ),
                op_id,
                error
            )))
            .await
    }

    /// Closes an open operation as failed without touching its tenant (an abandoned create whose
    /// tenant is being deleted, a tenant row gone). Fenced like [`Self::record_step`].
    pub async fn abandon_operation(&self, op_id: &str, fence: &Fence<'_>, error: &str) -> Result<bool> {
        self.db.changed(close_failed(op_id, fence, error)).await
    }

    /// Ends a saga that ran all its steps, in one batch: the tenant moves `from -> to` (a
    /// create's `active` also needs its binding wanted), and only then is the operation closed as
    /// succeeded and the change audited. `false` when the tenant was not in `from` any more (or
    /// the fence was lost): nothing changed.
    pub async fn complete_operation(
        &self,
        op_id: &str,
        fence: &Fence<'_>,
        slug: &str,
        from: TenantStatus,
        to: TenantStatus,
    ) -> Result<bool> {
        let deleted_at = if to == TenantStatus::Deleted { NOW } else { "deleted_at" };
        let batch = vec![
            fence.bind(sql!(
                format!(
                    "UPDATE tenants SET status = ?2, status_message = NULL, last_error = NULL, updated_at = {NOW}, \
                     deleted_at = {deleted_at} WHERE slug = ?1 AND status = ?3 AND (?2 != 'active' OR bind_wanted = 1) \
                     AND EXISTS (SELECT 1 FROM operations WHERE id = ?4 AND {OPEN}) AND {}",
                    fence.sql(5)
                ),
                slug,
                to.as_str(),
                from.as_str(),
                op_id
            )),
            close_succeeded_if_changed(op_id),
            audit_if_changed(
                "lifecycle",
                &format!("tenant.{}", to.as_str()),
                Some(slug),
                op_id,
                &serde_json::json!({ "operation": op_id }),
            ),
        ];
        let results = self.db.batch(batch).await?;
        Ok(changed_in(&results, 0))
    }

    /// A create that cannot succeed, in one batch: the operation is closed as failed and the
    /// tenant, still provisioning, becomes `failed` with the reason and stops asking for its
    /// binding (a failed tenant is not served; a binding refused, at the script's limit, would
    /// otherwise keep every later change of the binding set from going through). A resumed
    /// create asks again at its bind step. `false` when the fence was
    /// lost or the operation was closed meanwhile: nothing changed.
    pub async fn fail_create(&self, op_id: &str, fence: &Fence<'_>, slug: &str, reason: &str) -> Result<bool> {
        let batch = vec![
            close_failed(op_id, fence, reason),
            sql!(
                format!(
                    "UPDATE tenants SET status = 'failed', status_message = ?2, last_error = ?2, bind_wanted = 0, \
                     updated_at = {NOW} WHERE slug = ?1 AND status = 'provisioning' AND changes() > 0"
                ),
                slug,
                reason
            ),
            // Its host (it keeps the slot, for a resumed create) no longer wants its binding.
            host_set_changed(slug),
        ];
        let results = self.db.batch(batch).await?;
        Ok(changed_in(&results, 0))
    }

    /// Tenants mid-lifecycle (`provisioning`, `deleting`) with no open operation: left so by a
    /// crash of a version that wrote the row and its operation apart, or by a hand edit. The
    /// reconciler finishes them.
    pub async fn tenants_without_operation(&self, limit: u32) -> Result<Vec<TenantRow>> {
        self.db
            .all(sql!(
                format!(
                    "SELECT {TENANT_COLUMNS} FROM tenants t WHERE status IN ('provisioning', 'deleting') AND NOT EXISTS \
                     (SELECT 1 FROM operations o WHERE o.tenant_slug = t.slug AND o.{OPEN}) ORDER BY updated_at LIMIT ?1"
                ),
                limit
            ))
            .await
    }

    /// A provisioning tenant without an operation cannot be finished (the admin's password hash
    /// went with the request that never recorded it): it becomes `failed`, which a re-sent
    /// create resumes and a delete tears down. Only while it still has no open operation.
    pub async fn fail_stray_create(&self, slug: &str, reason: &str) -> Result<bool> {
        self.db
            .changed(sql!(
                format!(
                    "UPDATE tenants SET status = 'failed', status_message = ?2, last_error = ?2, updated_at = {NOW} \
                     WHERE slug = ?1 AND status = 'provisioning' AND NOT EXISTS \
                     (SELECT 1 FROM operations WHERE tenant_slug = ?1 AND {OPEN})"
                ),
                slug,
                reason
            ))
            .await
    }

    /// Opens a delete operation for a `deleting` tenant that has none.
    pub async fn open_stray_delete(&self, slug: &str, op_id: &str) -> Result<bool> {
        self.db.changed(open_delete(slug, op_id)).await
    }

    /// Replaces the operation's input (used to scrub the password hash once seeded).
    pub async fn set_operation_input(&self, op_id: &str, input: &str) -> Result<()> {
        self.db.run(sql!("UPDATE operations SET input = ?2 WHERE id = ?1", op_id, input)).await.map(drop)
    }

    // --- audit and leases ---------------------------------------------------------------------

    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        slug: Option<&str>,
        request_id: &str,
        detail: &Value,
    ) -> Result<()> {
        self.db
            .run(sql!(
                "INSERT INTO audit_log (actor, action, tenant_slug, request_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                actor,
                action,
                slug,
                request_id,
                detail.to_string()
            ))
            .await
            .map(drop)
    }

    /// Takes lease `name` for `ttl_ms` unless someone else holds an unexpired one.
    pub async fn acquire_lease(&self, name: &str, holder: &str, now_ms: f64, ttl_ms: f64) -> Result<bool> {
        self.db
            .changed(sql!(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                 WHERE leases.expires_at < ?4 OR leases.holder = excluded.holder",
                name,
                holder,
                now_ms + ttl_ms,
                now_ms
            ))
            .await
    }

    /// Extends lease `name` while `holder` still holds it; `false` when it does not any more.
    pub async fn renew_lease(&self, name: &str, holder: &str, now_ms: f64, ttl_ms: f64) -> Result<bool> {
        self.db
            .changed(sql!(
                "UPDATE leases SET expires_at = ?3 WHERE name = ?1 AND holder = ?2",
                name,
                holder,
                now_ms + ttl_ms
            ))
            .await
    }

    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        self.db.run(sql!("DELETE FROM leases WHERE name = ?1 AND holder = ?2", name, holder)).await.map(drop)
    }

    // --- audit anchors --------------------------------------------------------------------------

    /// The control plane's clock now, and tenant `slug`'s audit anchor if it has one, with whether
    /// the tenant's database was restored (or re-created) since it was taken. One query.
    pub async fn audit_anchor(&self, slug: &str) -> Result<(String, Option<Anchor>)> {
        #[derive(Deserialize)]
        struct Row {
            now: String,
            last_id: Option<i64>,
            hash: Option<String>,
            anchored_at: Option<String>,
            #[serde(deserialize_with = "flag")]
            restored_since: bool,
        }
        let row: Option<Row> = self
            .db
            .first(sql!(
                format!(
                    "SELECT {NOW} AS now, a.last_id, a.hash, a.anchored_at, EXISTS (SELECT 1 FROM operations o \
                     WHERE o.tenant_slug = ?1 AND o.kind IN ({kinds}) AND o.state = 'succeeded' \
                     AND o.finished_at >= a.anchored_at) AS restored_since \
                     FROM (SELECT 1) LEFT JOIN audit_anchors a ON a.tenant_slug = ?1",
                    kinds = new_database_kinds()
                ),
                slug
            ))
            .await?;
        let row = row.ok_or_else(|| SqlError::new("the anchor query returned no row"))?;
        let anchor = match (row.last_id, row.hash, row.anchored_at) {
            (Some(last_id), Some(hash), Some(anchored_at)) => {
                Some(Anchor { last_id, hash, anchored_at, restored_since: row.restored_since })
            }
            _ => None,
        };
        Ok((row.now, anchor))
    }

    /// Records `(last_id, hash)` as the head of tenant `slug`'s audit chain, read from database
    /// `database_id` by a verification that began at `began` (the control plane's clock,
    /// [`Self::audit_anchor`]). Only while that database is still the tenant's, in service, and no
    /// restore (or re-creation) is running or has finished since `began`: an anchor never records
    /// a head of data a restore has replaced. Whether it was recorded.
    pub async fn record_audit_anchor(
        &self,
        slug: &str,
        database_id: &str,
        last_id: i64,
        hash: &str,
        began: &str,
    ) -> Result<bool> {
        self.db
            .changed(sql!(
                format!(
                    "INSERT INTO audit_anchors (tenant_slug, database_id, last_id, hash, anchored_at) \
                     SELECT ?1, ?2, ?3, ?4, {NOW} \
                     WHERE EXISTS (SELECT 1 FROM tenants WHERE slug = ?1 AND database_id = ?2 \
                       AND restoring IS NULL AND status IN ('active', 'suspended')) \
                     AND NOT EXISTS (SELECT 1 FROM operations WHERE tenant_slug = ?1 AND kind IN ({kinds}) \
                       AND ({OPEN} OR (state = 'succeeded' AND finished_at >= ?5))) \
                     ON CONFLICT (tenant_slug) DO UPDATE SET database_id = excluded.database_id, \
                     last_id = excluded.last_id, hash = excluded.hash, anchored_at = excluded.anchored_at",
                    kinds = new_database_kinds()
                ),
                slug,
                database_id,
                last_id,
                hash,
                began
            ))
            .await
    }
}

/// An audit row written only when the statement just before it in the batch changed a row
/// (`changes()` is the row count of the last completed statement of the same connection, and a
/// batch runs its statements in order on one).
fn audit_if_changed(actor: &str, action: &str, slug: Option<&str>, request_id: &str, detail: &Value) -> Statement {
    sql!(
        "INSERT INTO audit_log (actor, action, tenant_slug, request_id, detail) \
         SELECT ?1, ?2, ?3, ?4, ?5 WHERE changes() > 0",
        actor,
        action,
        slug,
        request_id,
        detail.to_string()
    )
}

/// The operations after which a tenant's database holds other data than before (a restore, or a
/// create that may be a re-creation under the slug), as a quoted SQL list.
fn new_database_kinds() -> String {
    [OperationKind::Create, OperationKind::RestorePointInTime, OperationKind::RestoreBackup, OperationKind::Undelete]
        .iter()
        .map(|k| format!("'{}'", k.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Closes open operation `op_id` as failed with `reason`, while the runner holds `fence`.
fn close_failed(op_id: &str, fence: &Fence<'_>, reason: &str) -> Statement {
    fence.bind(sql!(
        format!(
            "UPDATE operations SET state = 'failed', last_error = ?2, next_step = NULL, finished_at = {NOW}, \
             updated_at = {NOW} WHERE id = ?1 AND {OPEN} AND {}",
            fence.sql(3)
        ),
        op_id,
        reason
    ))
}

/// Closes open operation `op_id` as succeeded when the statement before it in the batch changed a
/// row (the change that ends it).
fn close_succeeded_if_changed(op_id: &str) -> Statement {
    sql!(
        format!(
            "UPDATE operations SET state = 'succeeded', next_step = NULL, finished_at = {NOW}, updated_at = {NOW} \
             WHERE id = ?1 AND {OPEN} AND changes() > 0"
        ),
        op_id
    )
}

/// The statement that opens a delete operation for a `deleting` tenant, unless one is open.
fn open_delete(slug: &str, op_id: &str) -> Statement {
    sql!(
        "INSERT INTO operations (id, tenant_slug, kind, state, input, next_step) \
         SELECT ?2, ?1, 'delete', 'pending', '{}', ?3 WHERE EXISTS \
         (SELECT 1 FROM tenants WHERE slug = ?1 AND status = 'deleting') ON CONFLICT DO NOTHING",
        slug,
        op_id,
        step_name(OperationKind::Delete.steps()[0])
    )
}
