//! [`Sql`] over a D1 binding (`worker::D1Database`): the control plane, and each tenant's
//! database on the request path.

use serde_json::{Map, Value};
use wasm_bindgen::JsValue;
use worker::{D1Database, D1PreparedStatement, D1Result};

use super::sql::{Outcome, Param, Sql, SqlError, Statement};

fn js(param: &Param) -> JsValue {
    match param {
        Param::Null => JsValue::NULL,
        // D1 binds JavaScript numbers; every integer the control plane stores is a safe integer.
        Param::Int(i) => JsValue::from(*i as f64),
        Param::Real(r) => JsValue::from(*r),
        Param::Text(s) => JsValue::from_str(s),
    }
}

/// The D1 error's message (its `Debug` form carries a JavaScript stack).
pub fn error(e: worker::Error) -> SqlError {
    let text = match e {
        worker::Error::D1(d1) => d1.cause(),
        other => other.to_string(),
    };
    // A tenant database through its binding host (`host/client.mjs`).
    let after =
        |marker: &str| text.find(marker).map(|at| text[at + marker.len()..].lines().next().unwrap_or("").to_owned());
    if let Some(rest) = after("D1_NOT_BOUND: ") {
        return SqlError::not_bound(rest);
    }
    if let Some(rest) = after("D1_UNREACHABLE: ") {
        return SqlError::unreachable(rest);
    }
    SqlError::from_message(&text)
}

fn prepare(db: &D1Database, statement: &Statement) -> Result<D1PreparedStatement, SqlError> {
    let prepared = db.prepare(&statement.sql);
    if statement.params.is_empty() {
        return Ok(prepared);
    }
    let params: Vec<JsValue> = statement.params.iter().map(js).collect();
    prepared.bind(&params).map_err(error)
}

fn outcome(result: &D1Result) -> Result<Outcome, SqlError> {
    let rows = result.results::<Map<String, Value>>().map_err(error)?;
    let changes = result.meta().map_err(error)?.and_then(|m| m.changes).unwrap_or(0) as u64;
    Ok(Outcome { rows, changes })
}

impl Sql for D1Database {
    async fn batch(&self, statements: Vec<Statement>) -> Result<Vec<Outcome>, SqlError> {
        let prepared = statements.iter().map(|st| prepare(self, st)).collect::<Result<Vec<_>, _>>()?;
        let results = D1Database::batch(self, prepared).await.map_err(error)?;
        results.iter().map(outcome).collect()
    }

    async fn run(&self, statement: Statement) -> Result<Outcome, SqlError> {
        outcome(&prepare(self, &statement)?.all().await.map_err(error)?)
    }
}
