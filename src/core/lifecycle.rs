//! The tenant state machine and the steps of the create and delete sagas.
//!
//! ```text
//! provisioning ──▶ active ◀──▶ suspended
//!      │             │             │
//!      ▼             ▼             ▼
//!    failed ──────▶ deleting ──▶ deleted
//! ```
//! `failed` holds the error; re-sending the create resumes it (back to `provisioning`), and a
//! delete tears it down. Every step of a saga is idempotent, so any step may be run again after a
//! cut (Worker limit, API fault, lost response) by the next touch or by the reconciler.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    Provisioning,
    Active,
    Suspended,
    Deleting,
    Deleted,
    Failed,
}

/// A requested change of status that the state machine refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a tenant that is {from} cannot become {to}")]
pub struct InvalidTransition {
    pub from: TenantStatus,
    pub to: TenantStatus,
}

impl TenantStatus {
    pub const ALL: [TenantStatus; 6] =
        [Self::Provisioning, Self::Active, Self::Suspended, Self::Deleting, Self::Deleted, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Deleting => "deleting",
            Self::Deleted => "deleted",
            Self::Failed => "failed",
        }
    }

    /// Whether `self -> to` is a legal move. Staying put is not a transition.
    pub fn can_become(self, to: TenantStatus) -> bool {
        use TenantStatus::*;
        matches!(
            (self, to),
            (Provisioning, Active | Failed | Deleting)
                | (Failed, Provisioning | Deleting)
                | (Active, Suspended | Deleting)
                | (Suspended, Active | Deleting)
                | (Deleting, Deleted)
        )
    }

    pub fn transition(self, to: TenantStatus) -> Result<TenantStatus, InvalidTransition> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(InvalidTransition { from: self, to })
        }
    }

    /// Whether an operator (the admin API's `PATCH {"status": ...}`) may move a tenant from `self`
    /// to `to`: suspend an active tenant, resume a suspended one, or ask for the status it already
    /// has. The saga's own moves (`provisioning -> active`, `deleting -> deleted`, ...) are not
    /// the operator's: a tenant becomes active only when its create saga has bound and verified it.
    pub fn operator_can_set(self, to: TenantStatus) -> bool {
        use TenantStatus::*;
        matches!((self, to), (Active | Suspended, Active | Suspended))
    }

    /// The statuses an operator may move a tenant to `to` from (see [`Self::operator_can_set`]).
    pub fn operator_sources(to: TenantStatus) -> Vec<TenantStatus> {
        Self::ALL.into_iter().filter(|from| from.operator_can_set(to)).collect()
    }

    /// Terminal or resting states: nothing is left for the reconciler to do.
    pub fn is_settled(self) -> bool {
        matches!(self, Self::Active | Self::Suspended | Self::Deleted | Self::Failed)
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TenantStatus {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|status| status.as_str() == s).ok_or(())
    }
}

/// A tenant's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    Free,
    Pro,
    Enterprise,
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Pro => "pro",
            Self::Enterprise => "enterprise",
        }
    }
}

impl FromStr for Plan {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        [Self::Free, Self::Pro, Self::Enterprise].into_iter().find(|p| p.as_str() == s).ok_or(())
    }
}

/// What kind of lifecycle operation a row of the operations log is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    Create,
    Delete,
    /// Time Travel: the tenant's database restored in place to a point in time.
    RestorePointInTime,
    /// A backup imported into a new database, checked, then switched to.
    RestoreBackup,
    /// A deleted tenant brought back from its backup under its slug (a new database).
    Undelete,
}

/// One step of a saga. The order of [`OperationKind::steps`] is the order they run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Find the tenant's D1 database by its deterministic name, or create it.
    Database,
    /// Take a slot on a binding host, creating the host when all are full (a no-op without hosts).
    Place,
    /// Apply the tenant migrations (with the ledger) and stamp the slug: through the tenant's
    /// binding on its host, or through the REST API without hosts.
    Migrations,
    /// Insert the first admin user.
    Seed,
    /// Ask for the binding: mark the tenant bound and reconcile the Worker's binding set.
    Bind,
    /// Check, from a Worker invocation that has the binding, that it answers at the right schema.
    Verify,
    /// Export the database and store the dump as the tenant's backup.
    Backup,
    /// Remove the binding (reconcile without the tenant).
    Unbind,
    /// Delete the D1 database (already gone counts as done).
    DropDatabase,
    /// A restore: wait until no isolate can still be serving the tenant from what it cached
    /// before the restore began (the tenant answers 503 `restoring` meanwhile).
    Quiesce,
    /// Find the Time Travel bookmark of the asked time and restore the database to it.
    TimeTravel,
    /// Import the backup's SQL into the restore's new database.
    Import,
    /// Check the imported database before anything is served from it: the slug stamp, the schema
    /// (migrated up when older) and the row count of every table against the backup's.
    CheckImport,
    /// Point the tenant (and its binding) at the restored database; the old one is kept.
    Switch,
}

impl Step {
    /// The step's name as stored (`operations.steps`, `next_step`) and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::Place => "place",
            Self::Migrations => "migrations",
            Self::Seed => "seed",
            Self::Bind => "bind",
            Self::Verify => "verify",
            Self::Backup => "backup",
            Self::Unbind => "unbind",
            Self::DropDatabase => "drop_database",
            Self::Quiesce => "quiesce",
            Self::TimeTravel => "time_travel",
            Self::Import => "import",
            Self::CheckImport => "check_import",
            Self::Switch => "switch",
        }
    }
}

/// Where an operation of the operations log stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl OperationState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// Still to be run (by a re-send, a `GET`, or the reconciler).
    pub fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Running)
    }
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Delete => "delete",
            Self::RestorePointInTime => "restore_point_in_time",
            Self::RestoreBackup => "restore_backup",
            Self::Undelete => "undelete",
        }
    }

    /// A restore of some kind (the tenant is `restoring` while one of the in-place kinds runs).
    pub fn is_restore(self) -> bool {
        matches!(self, Self::RestorePointInTime | Self::RestoreBackup | Self::Undelete)
    }

    pub fn steps(self) -> &'static [Step] {
        match self {
            // Bound before it is migrated: on a host, migrations run through the binding.
            Self::Create => &[Step::Database, Step::Place, Step::Bind, Step::Migrations, Step::Seed, Step::Verify],
            Self::Delete => &[Step::Backup, Step::Unbind, Step::DropDatabase],
            // Migrated after the restore: the point in time may be before a migration.
            // Each ends by serving the tenant again (`ControlStore::complete_restore`).
            Self::RestorePointInTime => &[Step::Quiesce, Step::TimeTravel, Step::Migrations],
            // The tenant keeps serving its old data until the import has been checked.
            Self::RestoreBackup => {
                &[Step::Database, Step::Import, Step::CheckImport, Step::Quiesce, Step::Switch, Step::Verify]
            }
            Self::Undelete => &[Step::Database, Step::Import, Step::CheckImport, Step::Place, Step::Bind, Step::Verify],
        }
    }

    /// The first step of this saga not yet in `done`; `None` when the saga is complete.
    pub fn next_step(self, done: &[Step]) -> Option<Step> {
        self.steps().iter().copied().find(|s| !done.contains(s))
    }
}

impl FromStr for OperationKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        [Self::Create, Self::Delete, Self::RestorePointInTime, Self::RestoreBackup, Self::Undelete]
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TenantStatus::*;

    #[test]
    fn transitions_table() {
        let allowed = [
            (Provisioning, Active),
            (Provisioning, Failed),
            (Provisioning, Deleting),
            (Failed, Provisioning),
            (Failed, Deleting),
            (Active, Suspended),
            (Active, Deleting),
            (Suspended, Active),
            (Suspended, Deleting),
            (Deleting, Deleted),
        ];
        for from in TenantStatus::ALL {
            for to in TenantStatus::ALL {
                let want = allowed.contains(&(from, to));
                assert_eq!(from.can_become(to), want, "{from} -> {to}");
                assert_eq!(from.transition(to).is_ok(), want);
            }
        }
    }

    #[test]
    fn operators_only_suspend_and_resume() {
        for from in TenantStatus::ALL {
            for to in TenantStatus::ALL {
                let want = matches!((from, to), (Active | Suspended, Active | Suspended));
                assert_eq!(from.operator_can_set(to), want, "{from} -> {to}");
            }
        }
        // Above all: no operator request can make a provisioning or failed tenant active.
        assert!(!Provisioning.operator_can_set(Active));
        assert!(!Failed.operator_can_set(Active));
        assert_eq!(TenantStatus::operator_sources(Active), vec![Active, Suspended]);
        assert_eq!(TenantStatus::operator_sources(Provisioning), vec![]);
    }

    #[test]
    fn deleted_is_final_and_deleting_only_finishes() {
        for to in TenantStatus::ALL {
            assert!(!Deleted.can_become(to), "deleted -> {to}");
            assert_eq!(Deleting.can_become(to), to == Deleted);
        }
    }

    #[test]
    fn names_round_trip() {
        for s in TenantStatus::ALL {
            assert_eq!(s.as_str().parse::<TenantStatus>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{}\"", s.as_str()));
        }
        assert!("gone".parse::<TenantStatus>().is_err());
        for p in ["free", "pro", "enterprise"] {
            assert_eq!(p.parse::<Plan>().unwrap().as_str(), p);
        }
        assert!("gold".parse::<Plan>().is_err());
    }

    #[test]
    fn sagas_resume_at_the_first_step_not_done() {
        let create = OperationKind::Create;
        assert_eq!(create.next_step(&[]), Some(Step::Database));
        assert_eq!(create.next_step(&[Step::Database, Step::Place, Step::Bind, Step::Migrations]), Some(Step::Seed));
        // Order of `done` does not matter; a gap is filled first.
        assert_eq!(create.next_step(&[Step::Seed, Step::Database]), Some(Step::Place));
        // An operation begun by an earlier version (migrated and seeded before it was bound)
        // resumes with the steps it has not done: placed, then bound, then verified.
        let earlier = [Step::Database, Step::Migrations, Step::Seed];
        assert_eq!(create.next_step(&earlier), Some(Step::Place));
        assert_eq!(create.next_step(&[&earlier[..], &[Step::Place]].concat()), Some(Step::Bind));
        assert_eq!(create.next_step(&[&earlier[..], &[Step::Place, Step::Bind]].concat()), Some(Step::Verify));
        assert_eq!(create.next_step(create.steps()), None);
        assert_eq!(OperationKind::Delete.next_step(&[Step::Backup]), Some(Step::Unbind));
        assert_eq!(OperationKind::Delete.next_step(OperationKind::Delete.steps()), None);
    }

    #[test]
    fn step_and_state_names_are_their_serde_names() {
        let all = [
            Step::Database,
            Step::Place,
            Step::Migrations,
            Step::Seed,
            Step::Bind,
            Step::Verify,
            Step::Backup,
            Step::Unbind,
            Step::DropDatabase,
            Step::Quiesce,
            Step::TimeTravel,
            Step::Import,
            Step::CheckImport,
            Step::Switch,
        ];
        for step in all {
            assert_eq!(serde_json::to_value(step).unwrap(), step.as_str());
        }
        for state in
            [OperationState::Pending, OperationState::Running, OperationState::Succeeded, OperationState::Failed]
        {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
            assert_eq!(state.is_open(), matches!(state, OperationState::Pending | OperationState::Running));
        }
    }

    #[test]
    fn settled_states() {
        assert!(!Provisioning.is_settled());
        assert!(!Deleting.is_settled());
        for s in [Active, Suspended, Deleted, Failed] {
            assert!(s.is_settled());
        }
    }
}
