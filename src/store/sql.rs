//! SQL as data, and the one trait every SQLite-backed store runs on.
//!
//! A [`Statement`] is SQL text with its parameters; an [`Sql`] runs statements one at a time or
//! as a batch (one transaction: all or nothing, in order, on one connection, so `changes()` in a
//! statement sees the one before it). Three things implement it: a D1 binding (`d1.rs`, the
//! control plane and every tenant database in the Worker), a D1 database over the REST API
//! (`RestDatabase` in `crate::cloudflare`, for the create saga), and an in-memory SQLite
//! (`crate::fake::MemorySql`, for native tests). All three are SQLite, so the same statements,
//! with the same rules in their `WHERE` clauses, run on each.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// One bound parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}

impl From<String> for Param {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl From<&String> for Param {
    fn from(v: &String) -> Self {
        Self::Text(v.clone())
    }
}

impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<u32> for Param {
    fn from(v: u32) -> Self {
        Self::Int(v.into())
    }
}

impl From<usize> for Param {
    fn from(v: usize) -> Self {
        Self::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<bool> for Param {
    fn from(v: bool) -> Self {
        Self::Int(v.into())
    }
}

impl From<f64> for Param {
    fn from(v: f64) -> Self {
        Self::Real(v)
    }
}

impl<T: Into<Param>> From<Option<T>> for Param {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

impl From<&Value> for Param {
    /// A JSON value as D1's REST API binds it: strings, numbers and null as themselves, anything
    /// else as its JSON text.
    fn from(v: &Value) -> Self {
        match v {
            Value::Null => Self::Null,
            Value::String(s) => Self::Text(s.clone()),
            Value::Bool(b) => Self::Int((*b).into()),
            Value::Number(n) => n.as_i64().map_or_else(|| Self::Real(n.as_f64().unwrap_or(0.0)), Self::Int),
            other => Self::Text(other.to_string()),
        }
    }
}

impl Param {
    /// The parameter as JSON (the REST API's `params`).
    pub fn to_json(&self) -> Value {
        match self {
            Self::Null => Value::Null,
            Self::Int(i) => Value::from(*i),
            Self::Real(r) => Value::from(*r),
            Self::Text(s) => Value::from(s.as_str()),
        }
    }
}

/// SQL text and its parameters (`?1`, `?2`, ... in order).
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Param>,
}

impl Statement {
    pub fn new(sql: impl Into<String>) -> Self {
        Self { sql: sql.into(), params: Vec::new() }
    }

    /// Adds the next parameter.
    pub fn bind(mut self, param: impl Into<Param>) -> Self {
        self.params.push(param.into());
        self
    }
}

/// Shorthand: `sql!("... ?1 ?2", a, b)` is `Statement::new("...").bind(a).bind(b)`.
#[macro_export]
macro_rules! sql {
    ($text:expr $(, $param:expr)* $(,)?) => {
        $crate::store::sql::Statement::new($text)$(.bind($param))*
    };
}

/// What one statement gave back: its rows (as JSON objects) and how many rows it changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub rows: Vec<Map<String, Value>>,
    pub changes: u64,
}

impl Outcome {
    /// The rows as `T`.
    pub fn rows<T: DeserializeOwned>(&self) -> Result<Vec<T>, SqlError> {
        self.rows.iter().map(|r| decode(r.clone())).collect()
    }

    /// The rows as `T`, without copying them.
    pub fn into_rows<T: DeserializeOwned>(self) -> Result<Vec<T>, SqlError> {
        self.rows.into_iter().map(decode).collect()
    }

    /// The first row as `T`, if any.
    pub fn first<T: DeserializeOwned>(&self) -> Result<Option<T>, SqlError> {
        self.rows.first().map(|r| decode(r.clone())).transpose()
    }

    /// Whether the statement changed a row.
    pub fn changed(&self) -> bool {
        self.changes > 0
    }
}

fn decode<T: DeserializeOwned>(row: Map<String, Value>) -> Result<T, SqlError> {
    T::deserialize(Value::Object(row)).map_err(|e| SqlError::new(format!("unexpected row shape: {e}")))
}

/// A statement or batch that failed; SQLite's (or D1's) message, on one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SqlError {
    pub message: String,
    /// The database could not be reached (not that it refused the statement): trying again
    /// later may succeed.
    pub unreachable: bool,
    /// The database is not bound where it was looked for (a binding host that does not hold the
    /// tenant's binding, or not yet): bind it, then try again.
    pub not_bound: bool,
}

impl SqlError {
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), unreachable: false, not_bound: false }
    }

    /// The database is not bound where it was looked for.
    pub fn not_bound(message: impl Into<String>) -> Self {
        Self { not_bound: true, ..Self::new(message) }
    }

    /// The database could not be reached; trying again later may succeed.
    pub fn unreachable(message: impl Into<String>) -> Self {
        Self { unreachable: true, ..Self::new(message) }
    }

    /// The first non-empty line of `text`, without D1's prefixes.
    pub fn from_message(text: &str) -> Self {
        let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        Self::new(line.trim_start_matches("Error: ").trim_start_matches("D1_ERROR: "))
    }
}

/// A SQLite database: D1 through a binding or the REST API, or SQLite in memory.
#[allow(async_fn_in_trait)] // static dispatch only; wasm futures are not Send anyway
pub trait Sql {
    /// Runs `statements` in order as one transaction: every one applies, or none does.
    async fn batch(&self, statements: Vec<Statement>) -> Result<Vec<Outcome>, SqlError>;

    /// Runs one statement.
    async fn run(&self, statement: Statement) -> Result<Outcome, SqlError> {
        let mut out = self.batch(vec![statement]).await?;
        out.pop().ok_or_else(|| SqlError::new("the database returned no result"))
    }

    /// Runs one statement and reads its rows as `T`.
    async fn all<T: DeserializeOwned>(&self, statement: Statement) -> Result<Vec<T>, SqlError> {
        self.run(statement).await?.into_rows()
    }

    /// Runs one statement and reads its first row as `T`.
    async fn first<T: DeserializeOwned>(&self, statement: Statement) -> Result<Option<T>, SqlError> {
        self.run(statement).await?.first()
    }

    /// Runs one statement; whether it changed a row.
    async fn changed(&self, statement: Statement) -> Result<bool, SqlError> {
        Ok(self.run(statement).await?.changed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_from_rust_and_json_values() {
        let st = sql!("x", "a", 3_i64, None::<&str>, true, 1.5, Some("b"));
        assert_eq!(
            st.params,
            vec![
                Param::Text("a".into()),
                Param::Int(3),
                Param::Null,
                Param::Int(1),
                Param::Real(1.5),
                Param::Text("b".into())
            ]
        );
        assert_eq!(Param::from(&serde_json::json!(7)), Param::Int(7));
        assert_eq!(Param::from(&serde_json::json!({"a": 1})), Param::Text("{\"a\":1}".into()));
        assert_eq!(Param::Int(7).to_json(), serde_json::json!(7));
    }

    #[test]
    fn errors_keep_the_first_line_without_prefixes() {
        let e = SqlError::from_message("\nD1_ERROR: UNIQUE constraint failed: t.name\n    at stack");
        assert_eq!(e.message, "UNIQUE constraint failed: t.name");
    }
}
