//! [`Sql`] over D1's REST API (`POST /d1/database/{id}/query`): how the create saga reaches a new
//! tenant database before any Worker has its binding. An API fault that may pass (a 429, a 5xx, a
//! lost answer) is an `unreachable` [`SqlError`]; a refused statement is not.

use super::sql::{Outcome, Sql, SqlError, Statement};
use crate::cloudflare::{CfError, Client, Transport};

/// One D1 database, reached through the Cloudflare API client.
pub struct RestDatabase<'a, T> {
    pub api: &'a Client<T>,
    pub id: &'a str,
}

impl<T: Transport> RestDatabase<'_, T> {
    async fn send(&self, statements: &[Statement]) -> Result<Vec<Outcome>, CfError> {
        // Statements without parameters go as one multi-statement query, which D1 runs as one
        // transaction; with parameters, as a `batch`.
        let results = if statements.iter().all(|st| st.params.is_empty()) {
            let sql = statements.iter().map(|st| st.sql.trim_end_matches(';')).collect::<Vec<_>>().join(";\n");
            self.api.query(self.id, &sql, &[]).await?
        } else {
            let batch: Vec<(String, Vec<serde_json::Value>)> =
                statements.iter().map(|st| (st.sql.clone(), st.params.iter().map(|p| p.to_json()).collect())).collect();
            self.api.query_batch(self.id, &batch).await?
        };
        Ok(results.into_iter().map(|r| Outcome { rows: r.results, changes: r.meta.map_or(0, |m| m.changes) }).collect())
    }
}

impl<T: Transport> Sql for RestDatabase<'_, T> {
    async fn batch(&self, statements: Vec<Statement>) -> Result<Vec<Outcome>, SqlError> {
        self.send(&statements)
            .await
            .map_err(|e| SqlError { unreachable: e.is_transient(), ..SqlError::new(e.to_string()) })
    }
}
