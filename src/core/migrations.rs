//! The SQL migrations embedded in the Worker (see `build.rs`), and what "up to date" means.
//!
//! Ledgers use wrangler's `d1_migrations` table and its naming (the file name, `.sql` included),
//! so `wrangler d1 migrations list/apply` and the Worker agree on what a database has applied.

/// One numbered SQL file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub name: &'static str,
    pub sql: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The ledger table wrangler creates and reads.
pub const LEDGER_TABLE: &str = "d1_migrations";

/// The ledger's definition, as wrangler creates it.
pub const LEDGER_DDL: &str = "CREATE TABLE IF NOT EXISTS d1_migrations(id INTEGER PRIMARY KEY AUTOINCREMENT, \
     name TEXT UNIQUE, applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL)";

/// How a database's ledger compares with the migrations this Worker embeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerState {
    /// Every embedded migration is applied, in order, and nothing else.
    Current,
    /// These embedded migrations are not applied yet (a prefix of the list is).
    Behind { pending: Vec<&'static str> },
    /// The ledger holds a migration this Worker does not know, or a different order: the database
    /// was migrated by newer (or other) code. Serving it with this code's schema would be wrong.
    Diverged { unknown: Vec<String> },
}

/// Compares an `applied` ledger (names in apply order) with `embedded`.
pub fn compare(embedded: &[Migration], applied: &[String]) -> LedgerState {
    let matching = embedded.iter().zip(applied).take_while(|(m, a)| m.name == a.as_str()).count();
    if matching < applied.len() {
        return LedgerState::Diverged { unknown: applied[matching..].to_vec() };
    }
    if matching < embedded.len() {
        return LedgerState::Behind { pending: embedded[matching..].iter().map(|m| m.name).collect() };
    }
    LedgerState::Current
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMBEDDED: &[Migration] =
        &[Migration { name: "0001_a.sql", sql: "" }, Migration { name: "0002_b.sql", sql: "" }];

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ledger_states() {
        assert_eq!(compare(EMBEDDED, &names(&["0001_a.sql", "0002_b.sql"])), LedgerState::Current);
        assert_eq!(compare(EMBEDDED, &names(&["0001_a.sql"])), LedgerState::Behind { pending: vec!["0002_b.sql"] });
        assert_eq!(compare(EMBEDDED, &[]), LedgerState::Behind { pending: vec!["0001_a.sql", "0002_b.sql"] });
        assert_eq!(
            compare(EMBEDDED, &names(&["0001_a.sql", "0002_b.sql", "0003_c.sql"])),
            LedgerState::Diverged { unknown: names(&["0003_c.sql"]) }
        );
        assert_eq!(
            compare(EMBEDDED, &names(&["0002_b.sql"])),
            LedgerState::Diverged { unknown: names(&["0002_b.sql"]) }
        );
    }

    #[test]
    fn embedded_migrations_are_numbered_in_order_and_not_empty() {
        for set in [CONTROL, TENANT] {
            assert!(!set.is_empty());
            for (i, m) in set.iter().enumerate() {
                assert!(m.name.starts_with(&format!("{:04}_", i + 1)), "{} out of sequence", m.name);
                assert!(m.name.ends_with(".sql"));
                assert!(!m.sql.trim().is_empty(), "{} is empty", m.name);
            }
        }
    }
}
