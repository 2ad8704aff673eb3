//! Applying tenant migrations through the tenant's own binding (not the REST API): each pending
//! migration and its ledger row run as one D1 `batch`, one transaction, so a tenant database is
//! always at a whole migration. Two runners racing on one database are safe: the ledger's
//! `UNIQUE(name)` rolls the loser's batch back, and it re-reads the ledger.

use serde::Deserialize;
use wasm_bindgen::JsValue;
use worker::D1Database;

use crate::core::migrations::{self, LedgerState, LEDGER_DDL, LEDGER_TABLE};
use crate::core::sql::split_statements;

/// A migration that could not be applied; the database stays at `version`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{migration}: {message}")]
pub struct MigrateError {
    pub version: usize,
    pub migration: String,
    pub message: String,
}

/// SQLite's message from a D1 error, on one line (the D1 error's Debug form carries a JS stack).
pub fn message(e: &worker::Error) -> String {
    let text = match e {
        worker::Error::D1(d1) => d1.cause(),
        other => other.to_string(),
    };
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    line.trim_start_matches("Error: ").trim_start_matches("D1_ERROR: ").to_owned()
}

#[derive(Deserialize)]
struct Name {
    name: String,
}

async fn applied(db: &D1Database) -> Result<Vec<String>, String> {
    let rows =
        db.prepare(format!("SELECT name FROM {LEDGER_TABLE} ORDER BY id")).all().await.map_err(|e| e.to_string())?;
    Ok(rows.results::<Name>().map_err(|e| e.to_string())?.into_iter().map(|r| r.name).collect())
}

/// Brings `db` to this Worker's tenant schema; returns the version it is at (the number of
/// migrations applied).
pub async fn apply_pending(db: &D1Database) -> Result<usize, MigrateError> {
    let fail = |version: usize, migration: &str, message: String| MigrateError {
        version,
        migration: migration.to_owned(),
        message,
    };
    db.prepare(LEDGER_DDL).run().await.map_err(|e| fail(0, LEDGER_TABLE, message(&e)))?;
    loop {
        let done = applied(db).await.map_err(|e| fail(0, LEDGER_TABLE, e))?;
        let pending = match migrations::compare(migrations::TENANT, &done) {
            LedgerState::Current => return Ok(done.len()),
            LedgerState::Behind { pending } => pending,
            LedgerState::Diverged { unknown } => {
                return Err(fail(
                    done.len(),
                    &unknown.join(","),
                    "the ledger has migrations this Worker does not know".into(),
                ))
            }
        };
        let migration =
            migrations::TENANT.iter().find(|m| m.name == pending[0]).expect("pending names come from TENANT");
        let mut batch: Vec<_> = split_statements(migration.sql).into_iter().map(|s| db.prepare(s)).collect();
        let ledger = db
            .prepare(format!("INSERT INTO {LEDGER_TABLE} (name) VALUES (?1)"))
            .bind(&[JsValue::from_str(migration.name)])
            .map_err(|e| fail(done.len(), migration.name, message(&e)))?;
        batch.push(ledger);
        if let Err(e) = db.batch(batch).await {
            // Someone else applied it meanwhile? Then carry on; else this migration fails here.
            let now = applied(db).await.map_err(|e| fail(done.len(), LEDGER_TABLE, e))?;
            if !now.iter().any(|n| n == migration.name) {
                return Err(fail(done.len(), migration.name, message(&e)));
            }
        }
    }
}
