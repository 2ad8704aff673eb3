//! A tenant's own database, as the platform sees it: checked to belong to its tenant (the slug
//! stamp in `tenant_meta`) and to be at this Worker's schema, prepared for a new tenant, and
//! given the platform's roles. Generic over [`Sql`]: the tenant's binding on the request path and
//! in fleet passes, the REST API in the create saga, in-memory SQLite in native tests.

use serde::Deserialize;

use super::control::ControlStore;
use super::migrate::{self, MigrateError};
use super::sql::{Sql, SqlError, Statement};
use crate::core::migrations::{self, LedgerState, LEDGER_TABLE};
use crate::core::roles::RoleSpec;
use crate::core::slug::TenantSlug;
use crate::sql;

/// Why a tenant database cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("the database did not answer: {0}")]
    Unreachable(SqlError),
    /// SECURITY: the binding holds a database stamped for another tenant (or not stamped).
    #[error("SECURITY: the database is stamped {found:?}, not for this tenant; refusing to serve")]
    Stamped { found: Option<String> },
    #[error("on-demand migration failed: {0}")]
    Migrating(MigrateError),
    /// Migrated by newer (or other) code: serving it with this code's schema would be wrong.
    #[error("the ledger has migrations this Worker does not know: {0:?}")]
    Diverged(Vec<String>),
}

/// A tenant's database, checked to belong to that tenant and to be at this Worker's schema.
pub struct TenantDb<S> {
    slug: TenantSlug,
    db: S,
    applied: Vec<String>,
}

#[derive(Deserialize)]
struct Value {
    value: String,
}

#[derive(Deserialize)]
struct Name {
    name: String,
}

fn current_schema() -> Vec<String> {
    migrations::TENANT.iter().map(|m| m.name.to_owned()).collect()
}

impl<S: Sql> TenantDb<S> {
    /// A database this isolate verified recently (the tenant lookup remembers which).
    pub fn trusted(db: S, slug: TenantSlug) -> Self {
        Self { slug, db, applied: current_schema() }
    }

    /// Checks `db`: stamped with `slug`, and its ledger exactly this Worker's tenant migrations.
    /// A database behind is migrated on demand, each migration atomic, and the new version is
    /// recorded in the control plane (a failure to record is logged: the next fleet pass records
    /// it); if migrating fails, the tenant is not served with the wrong schema.
    pub async fn open<C: Sql>(db: S, slug: TenantSlug, control: &ControlStore<C>) -> Result<Self, NotReady> {
        // One round trip: the stamp and the ledger.
        let results = db
            .batch(vec![
                sql!("SELECT value FROM tenant_meta WHERE key = 'slug'"),
                Statement::new(format!("SELECT name FROM {LEDGER_TABLE} ORDER BY id")),
            ])
            .await
            .map_err(NotReady::Unreachable)?;
        let [stamp, ledger] = results.as_slice() else {
            return Err(NotReady::Unreachable(SqlError::new(format!("batch returned {} results", results.len()))));
        };
        let stamp = stamp.first::<Value>().map_err(NotReady::Unreachable)?;
        let applied: Vec<String> =
            ledger.rows::<Name>().map_err(NotReady::Unreachable)?.into_iter().map(|r| r.name).collect();
        if stamp.as_ref().map(|s| s.value.as_str()) != Some(slug.as_str()) {
            return Err(NotReady::Stamped { found: stamp.map(|s| s.value) });
        }
        match migrations::compare(migrations::TENANT, &applied) {
            LedgerState::Current => Ok(Self { slug, db, applied }),
            LedgerState::Behind { .. } => {
                let version = migrate::apply_pending(&db, migrations::TENANT).await.map_err(NotReady::Migrating)?;
                if let Err(e) = control.record_migration(slug.as_str(), version, None).await {
                    crate::log::error(&format!(
                        "tenant {slug}: migrated on demand to {version}, but recording it failed: {e}"
                    ));
                }
                Ok(Self { slug, db, applied: current_schema() })
            }
            LedgerState::Diverged { unknown } => Err(NotReady::Diverged(unknown)),
        }
    }

    pub fn slug(&self) -> &TenantSlug {
        &self.slug
    }

    pub fn db(&self) -> &S {
        &self.db
    }

    /// The migrations applied, in order.
    pub fn schema(&self) -> &[String] {
        &self.applied
    }
}

/// The slug a database is stamped with, if any (`None` also when there is no `tenant_meta` yet).
pub async fn stamp<S: Sql>(db: &S) -> Result<Option<String>, SqlError> {
    let stamp: Option<Value> = db
        .first(sql!(
            "SELECT value FROM tenant_meta WHERE key = 'slug' \
             AND EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tenant_meta')"
        ))
        .await
        .or_else(|e| if e.message.contains("no such table") { Ok(None) } else { Err(e) })?;
    Ok(stamp.map(|v| v.value))
}

/// Why a new tenant database could not be prepared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepareError {
    #[error("{0}")]
    Sql(#[from] SqlError),
    #[error("{0}")]
    Migrate(#[from] MigrateError),
    /// Never taken over, whatever else is in it.
    #[error("the database is stamped for tenant {0}")]
    StampedForAnother(String),
    #[error("the database's slug stamp could not be written")]
    StampMissing,
}

impl PrepareError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Sql(e) => e.unreachable,
            Self::Migrate(e) => e.unreachable,
            Self::StampedForAnother(_) | Self::StampMissing => false,
        }
    }

    /// Whether the database was not bound where it was looked for.
    pub fn is_not_bound(&self) -> bool {
        match self {
            Self::Sql(e) => e.not_bound,
            Self::Migrate(e) => e.not_bound,
            Self::StampedForAnother(_) | Self::StampMissing => false,
        }
    }
}

/// Makes a new tenant's database ready: refuses one stamped for another tenant (checked before
/// any change), applies the tenant migrations, and stamps it with `slug`. Idempotent: a database
/// prepared already is left as it is. Returns the schema version.
pub async fn prepare<S: Sql>(db: &S, slug: &TenantSlug) -> Result<usize, PrepareError> {
    if let Some(found) = stamp(db).await? {
        if found != slug.as_str() {
            return Err(PrepareError::StampedForAnother(found));
        }
    }
    let version = migrate::apply_pending(db, migrations::TENANT).await?;
    db.run(sql!(
        "INSERT INTO tenant_meta (key, value) VALUES ('slug', ?1) ON CONFLICT (key) DO NOTHING",
        slug.as_str()
    ))
    .await?;
    match stamp(db).await? {
        Some(found) if found == slug.as_str() => Ok(version),
        Some(found) => Err(PrepareError::StampedForAnother(found)),
        None => Err(PrepareError::StampMissing),
    }
}

/// Makes the tenant's system roles exactly the platform's, in one batch (one transaction).
///
/// Nothing a tenant made is lost to a platform change: a tenant's own role that has a platform
/// role's name stays the tenant's (the upsert only updates a row that is a system role), so that
/// tenant simply does not get the platform role of that name, and removing the platform role
/// later deletes only system rows. The tenant's role wins in its own database.
pub async fn sync_roles<S: Sql>(db: &S, roles: &[RoleSpec]) -> Result<(), SqlError> {
    let names =
        serde_json::to_string(&roles.iter().map(|r| &r.name).collect::<Vec<_>>()).unwrap_or_else(|_| "[]".into());
    let mut batch =
        vec![sql!("DELETE FROM roles WHERE is_system = 1 AND name NOT IN (SELECT value FROM json_each(?1))", names)];
    for role in roles {
        let permissions = serde_json::to_string(&role.permissions).unwrap_or_else(|_| "[]".into());
        batch.push(sql!(
            "INSERT INTO roles (name, description, permissions, is_system) VALUES (?1, ?2, ?3, 1) ON CONFLICT (name) DO UPDATE SET \
             description = excluded.description, permissions = excluded.permissions, \
             updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE roles.is_system = 1",
            role.name.as_str(),
            role.description.as_str(),
            permissions
        ));
    }
    db.batch(batch).await.map(drop)
}
