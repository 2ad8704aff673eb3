//! The one migration runner, over any [`Sql`]: a tenant database through its binding (on-demand
//! and fleet migrations), a new tenant database over the REST API (the create saga), an in-memory
//! SQLite in native tests. The ledger lives in the database itself (wrangler's `d1_migrations`).
//!
//! Each pending migration and its ledger row run as one batch, one transaction, so a database is
//! always at a whole migration. Two runners racing on one database are safe: the ledger's
//! `UNIQUE(name)` rolls the loser's batch back, and it re-reads the ledger.

use serde::Deserialize;

use super::sql::{Sql, SqlError, Statement};
use crate::core::migrations::{self, LedgerState, Migration, LEDGER_DDL, LEDGER_TABLE};
use crate::core::sql::split_statements;

/// A migration that could not be applied; the database stays at `version`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{migration}: {message}")]
pub struct MigrateError {
    pub version: usize,
    pub migration: String,
    pub message: String,
    /// The database could not be reached: trying again later may succeed.
    pub unreachable: bool,
    /// The database is not bound where it was looked for.
    pub not_bound: bool,
}

impl From<MigrateError> for SqlError {
    fn from(e: MigrateError) -> Self {
        SqlError { unreachable: e.unreachable, not_bound: e.not_bound, ..SqlError::new(e.to_string()) }
    }
}

#[derive(Deserialize)]
struct Name {
    name: String,
}

/// The ledger: names of the applied migrations in order; empty when there is no ledger table.
pub async fn applied<S: Sql>(db: &S) -> Result<Vec<String>, SqlError> {
    let exists =
        Statement::new(format!("SELECT name FROM sqlite_master WHERE type = 'table' AND name = '{LEDGER_TABLE}'"));
    if db.all::<Name>(exists).await?.is_empty() {
        return Ok(Vec::new());
    }
    ledger(db).await
}

/// The ledger of a database that has one, in one query (over the REST API each is an API call).
async fn ledger<S: Sql>(db: &S) -> Result<Vec<String>, SqlError> {
    let ledger = Statement::new(format!("SELECT name FROM {LEDGER_TABLE} ORDER BY id"));
    Ok(db.all::<Name>(ledger).await?.into_iter().map(|r| r.name).collect())
}

/// The statements that apply `migration` with its ledger row. The row is written literally (a
/// migration's name is a file name `build.rs` checked), so the batch has no parameters and can go
/// to the REST API as one multi-statement query, which D1 runs as one transaction.
fn with_ledger_row(migration: &Migration) -> Vec<Statement> {
    let mut batch: Vec<Statement> = split_statements(migration.sql).into_iter().map(Statement::new).collect();
    batch.push(Statement::new(format!(
        "INSERT INTO {LEDGER_TABLE} (name) VALUES ('{}')",
        migration.name.replace('\'', "''")
    )));
    batch
}

/// Brings `db` to `set` (e.g. [`migrations::TENANT`]); returns the version it is at (the number
/// of migrations applied).
pub async fn apply_pending<S: Sql>(db: &S, set: &[Migration]) -> Result<usize, MigrateError> {
    let fail = |version: usize, migration: &str, e: SqlError| MigrateError {
        version,
        migration: migration.to_owned(),
        message: e.message,
        unreachable: e.unreachable,
        not_bound: e.not_bound,
    };
    db.run(Statement::new(LEDGER_DDL)).await.map_err(|e| fail(0, LEDGER_TABLE, e))?;
    loop {
        let done = ledger(db).await.map_err(|e| fail(0, LEDGER_TABLE, e))?;
        let pending = match migrations::compare(set, &done) {
            LedgerState::Current => return Ok(done.len()),
            LedgerState::Behind { pending } => pending,
            LedgerState::Diverged { unknown } => {
                let e = SqlError::new("the ledger has migrations this Worker does not know");
                return Err(fail(done.len(), &unknown.join(","), e));
            }
        };
        let migration = set.iter().find(|m| m.name == pending[0]).expect("pending names come from the set");
        if let Err(e) = db.batch(with_ledger_row(migration)).await {
            // Someone else applied it meanwhile (or a lost answer hid our success)? Then carry
            // on; else this migration fails here.
            let now = ledger(db).await.map_err(|e| fail(done.len(), LEDGER_TABLE, e))?;
            if !now.iter().any(|n| n == migration.name) {
                return Err(fail(done.len(), migration.name, e));
            }
        }
    }
}
