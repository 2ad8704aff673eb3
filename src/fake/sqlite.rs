//! [`Sql`] on an in-memory SQLite database: the control store's (and a tenant database's)
//! stand-in in native tests. D1 is SQLite, so the store's own statements, with the rules in their
//! `WHERE` clauses, run here unchanged: the tests exercise the real SQL, not a model of it.

use std::cell::RefCell;
use std::rc::Rc;

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{params_from_iter, Connection};
use serde_json::{Map, Value};

use crate::store::sql::{Outcome, Param, Sql, SqlError, Statement};

/// An in-memory SQLite database. Clones share it (as two bindings of one D1 database do).
#[derive(Clone)]
pub struct MemorySql {
    conn: Rc<RefCell<Connection>>,
}

impl Default for MemorySql {
    fn default() -> Self {
        Self::new()
    }
}

fn to_sql(param: &Param) -> SqlValue {
    match param {
        Param::Null => SqlValue::Null,
        Param::Int(i) => SqlValue::Integer(*i),
        Param::Real(r) => SqlValue::Real(*r),
        Param::Text(s) => SqlValue::Text(s.clone()),
    }
}

fn to_json(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(r) => Value::from(r),
        ValueRef::Text(t) => Value::from(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::from(b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
    }
}

fn err(e: rusqlite::Error) -> SqlError {
    SqlError::from_message(&e.to_string())
}

fn execute(conn: &Connection, statement: &Statement) -> Result<Outcome, SqlError> {
    let before = conn.total_changes();
    // Cached: the same statements run again and again (D1 keeps prepared statements too).
    let mut prepared = conn.prepare_cached(&statement.sql).map_err(err)?;
    let names: Vec<String> = prepared.column_names().into_iter().map(str::to_owned).collect();
    let mut rows = prepared.query(params_from_iter(statement.params.iter().map(to_sql))).map_err(err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(err)? {
        let mut object = Map::new();
        for (i, name) in names.iter().enumerate() {
            object.insert(name.clone(), to_json(row.get_ref(i).map_err(err)?));
        }
        out.push(object);
    }
    drop(rows);
    Ok(Outcome { rows: out, changes: conn.total_changes().saturating_sub(before) })
}

impl MemorySql {
    pub fn new() -> Self {
        let conn = Connection::open_in_memory().expect("an in-memory SQLite database opens");
        // Small pages: a fleet simulation holds tens of thousands of these, each mostly schema.
        conn.execute_batch("PRAGMA page_size = 1024;").expect("a new database takes a page size");
        conn.set_prepared_statement_cache_capacity(256);
        Self { conn: Rc::new(RefCell::new(conn)) }
    }

    /// Runs `sql` (several `;`-separated statements, no parameters) at once, as a migration does.
    pub fn execute_script(&self, sql: &str) -> Result<(), SqlError> {
        self.conn.borrow().execute_batch(sql).map_err(err)
    }

    /// The database as SQL text (schema and rows), as D1's export gives it.
    pub fn dump(&self) -> String {
        let conn = self.conn.borrow();
        let mut out = String::from("PRAGMA defer_foreign_keys=TRUE;\n");
        let mut tables = conn
            .prepare(
                "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
            )
            .expect("sqlite_master is readable");
        let list: Vec<(String, String)> = tables
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("sqlite_master is readable")
            .filter_map(Result::ok)
            .collect();
        for (name, create) in list {
            out.push_str(&create);
            out.push_str(";\n");
            let select = format!("SELECT * FROM \"{name}\"");
            let Ok(mut rows) = conn.prepare(&select) else { continue };
            let n = rows.column_count();
            let values: Vec<Vec<Value>> = rows
                .query_map([], |r| (0..n).map(|i| r.get_ref(i).map(to_json)).collect())
                .map(|it| it.filter_map(Result::ok).collect())
                .unwrap_or_default();
            for row in values {
                let cells: Vec<String> = row
                    .iter()
                    .map(|v| match v {
                        Value::Null => "NULL".to_owned(),
                        Value::String(s) => format!("'{}'", s.replace('\'', "''")),
                        other => other.to_string(),
                    })
                    .collect();
                out.push_str(&format!("INSERT INTO \"{name}\" VALUES({});\n", cells.join(",")));
            }
        }
        out
    }
}

impl Sql for MemorySql {
    async fn batch(&self, statements: Vec<Statement>) -> Result<Vec<Outcome>, SqlError> {
        let mut conn = self.conn.borrow_mut();
        let tx = conn.transaction().map_err(err)?;
        let mut out = Vec::with_capacity(statements.len());
        for statement in &statements {
            // An error drops `tx`, which rolls the whole batch back, as D1 does.
            out.push(execute(&tx, statement)?);
        }
        tx.commit().map_err(err)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql;

    #[tokio::test]
    async fn a_batch_is_one_transaction_and_changes_sees_the_statement_before() {
        let db = MemorySql::new();
        db.execute_script("CREATE TABLE t (name TEXT UNIQUE, n INTEGER); CREATE TABLE log (what TEXT);").unwrap();
        let out = db
            .batch(vec![
                sql!("INSERT INTO t (name, n) VALUES (?1, ?2)", "a", 1_i64),
                sql!("INSERT INTO log (what) SELECT 'inserted' WHERE changes() > 0"),
            ])
            .await
            .unwrap();
        assert_eq!(out.iter().map(|o| o.changes).collect::<Vec<_>>(), vec![1, 1]);
        // The second statement fails: the first one of the batch is rolled back too.
        let failed = db
            .batch(vec![sql!("INSERT INTO t (name, n) VALUES ('b', 2)"), sql!("INSERT INTO t (name) VALUES ('a')")])
            .await;
        assert!(failed.unwrap_err().message.contains("UNIQUE"));
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Row {
            name: String,
            n: i64,
        }
        let rows: Vec<Row> = db.all(sql!("SELECT name, n FROM t ORDER BY name")).await.unwrap();
        assert_eq!(rows, vec![Row { name: "a".into(), n: 1 }]);
        // A SELECT changes nothing, whatever ran before it.
        assert_eq!(db.run(sql!("SELECT 1")).await.unwrap().changes, 0);
    }
}
