//! Backup policy: when a tenant is due, which backups the retention policy keeps, and what a dump
//! holds (its rows per table, checked again after a restore from it).
//!
//! Retention (`BACKUP_RETENTION`, e.g. `daily=7,weekly=8`): every backup younger than `daily`
//! days is kept; older ones, the newest of each of the last `weekly` weeks (weeks of 7 days from
//! the Unix epoch's Monday, 1970-01-05); the newest backup of a tenant is never pruned, whatever its age.

use std::collections::{BTreeMap, BTreeSet};

use super::sql::split_statements;

const DAY_MS: i64 = 86_400_000;
const WEEK_MS: i64 = 7 * DAY_MS;
/// 1970-01-05, the first Monday after the epoch: weeks run Monday to Sunday (UTC).
const FIRST_MONDAY_MS: i64 = 4 * DAY_MS;

/// How long scheduled backups are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub daily_days: u32,
    pub weekly_weeks: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Self { daily_days: 7, weekly_weeks: 8 }
    }
}

impl Retention {
    /// `daily=7,weekly=8` (either may be left out: 0).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Self { daily_days: 0, weekly_weeks: 0 };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| format!("`{part}` is not key=value"))?;
            let n: u32 = value.trim().parse().map_err(|_| format!("`{value}` is not a whole number"))?;
            match key.trim() {
                "daily" if n <= 3_650 => out.daily_days = n,
                "weekly" if n <= 520 => out.weekly_weeks = n,
                "daily" | "weekly" => return Err(format!("{key}={n} is more than 10 years")),
                other => return Err(format!("unknown retention `{other}` (daily, weekly)")),
            }
        }
        if out.daily_days == 0 && out.weekly_weeks == 0 {
            return Err("keeps nothing: give daily=N and/or weekly=N".into());
        }
        Ok(out)
    }

    /// Of one tenant's backups (`(id, taken_at_ms)`), the ids to prune at `now_ms`.
    pub fn prune(&self, backups: &[(i64, i64)], now_ms: i64) -> Vec<i64> {
        let newest = backups.iter().max_by_key(|(id, at)| (*at, *id)).map(|(id, _)| *id);
        let daily_from = now_ms - i64::from(self.daily_days) * DAY_MS;
        let this_week = week_of(now_ms);
        // The newest backup of each week in the weekly window.
        let mut weekly: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        for &(id, at) in backups {
            let week = week_of(at);
            if this_week - week < i64::from(self.weekly_weeks) {
                let slot = weekly.entry(week).or_insert((at, id));
                if (at, id) > *slot {
                    *slot = (at, id);
                }
            }
        }
        let keep: BTreeSet<i64> = backups
            .iter()
            .filter(|(_, at)| *at >= daily_from)
            .map(|(id, _)| *id)
            .chain(weekly.values().map(|(_, id)| *id))
            .chain(newest)
            .collect();
        let mut prune: Vec<i64> = backups.iter().map(|(id, _)| *id).filter(|id| !keep.contains(id)).collect();
        prune.sort_unstable();
        prune
    }
}

fn week_of(ms: i64) -> i64 {
    (ms - FIRST_MONDAY_MS).div_euclid(WEEK_MS)
}

/// Rows per table in a SQL dump (its `INSERT INTO` statements), tables with none included when
/// the dump creates them. D1's export writes one `INSERT INTO "table" VALUES(...)` per row.
pub fn row_counts(dump: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for statement in split_statements(dump) {
        let s = statement.trim_start();
        if let Some(table) = table_after(s, "CREATE TABLE") {
            counts.entry(table).or_insert(0);
        } else if let Some(table) = table_after(s, "INSERT INTO") {
            *counts.entry(table).or_insert(0) += 1;
        }
    }
    // D1's own bookkeeping tables are not the tenant's data.
    counts.retain(|table, _| !table.starts_with("_cf_") && !table.starts_with("sqlite_"));
    counts
}

/// The (unquoted) table name after `keyword` at the start of `statement`, case-insensitively;
/// `IF NOT EXISTS` is skipped.
fn table_after(statement: &str, keyword: &str) -> Option<String> {
    let head = statement.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let mut rest = statement[keyword.len()..].trim_start();
    if rest.get(..13).is_some_and(|h| h.eq_ignore_ascii_case("IF NOT EXISTS")) {
        rest = rest[13..].trim_start();
    }
    let name = match rest.chars().next()? {
        q @ ('"' | '`' | '[') => {
            let close = if q == '[' { ']' } else { q };
            let end = rest[1..].find(close)?;
            rest[1..1 + end].to_owned()
        }
        _ => rest.split(|c: char| c.is_whitespace() || c == '(').next()?.to_owned(),
    };
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses() {
        assert_eq!(Retention::parse("daily=7,weekly=8"), Ok(Retention { daily_days: 7, weekly_weeks: 8 }));
        assert_eq!(Retention::parse(" weekly = 4 "), Ok(Retention { daily_days: 0, weekly_weeks: 4 }));
        for bad in ["", "daily=0", "daily=x", "monthly=3", "daily", "daily=99999"] {
            assert!(Retention::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prune_keeps_daily_then_one_a_week_and_always_the_newest() {
        let r = Retention { daily_days: 7, weekly_weeks: 3 };
        // One backup a day for 60 days, the newest taken now (day 0), on a Wednesday noon.
        let now = FIRST_MONDAY_MS + 1_000 * WEEK_MS + 2 * DAY_MS + DAY_MS / 2;
        let backups: Vec<(i64, i64)> = (0..60).map(|d| (d, now - d * DAY_MS)).collect();
        let pruned = r.prune(&backups, now);
        let kept: Vec<i64> = backups.iter().map(|b| b.0).filter(|id| !pruned.contains(id)).collect();
        // Days 0..=7 (inside 7 days, day 7 exactly at the edge), then the newest of each of the
        // 3 weeks counted from this one: this week's (day 0), last week's Sunday (day 3),
        // the week before's Sunday (day 10).
        assert_eq!(kept, vec![0, 1, 2, 3, 4, 5, 6, 7, 10]);
        // Nothing kept by the policy any more: the newest one still stays.
        let old = [(1, now - 400 * DAY_MS), (2, now - 300 * DAY_MS)];
        assert_eq!(r.prune(&old, now), vec![1]);
        assert_eq!(r.prune(&[], now), Vec::<i64>::new());
    }

    #[test]
    fn rows_are_counted_per_table() {
        let dump = "PRAGMA defer_foreign_keys=TRUE;\nCREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT);\n\
                    INSERT INTO \"users\" VALUES(1,'a;b');\nINSERT INTO \"users\" VALUES(2,'INSERT INTO \"x\" VALUES(1)');\n\
                    CREATE TABLE IF NOT EXISTS \"empty\" (x);\nCREATE TABLE _cf_KV(key, value);\n\
                    INSERT INTO _cf_KV VALUES('a','b');\nCREATE INDEX i ON users(email);";
        let counts = row_counts(dump);
        assert_eq!(counts, BTreeMap::from([("empty".to_owned(), 0), ("users".to_owned(), 2)]));
    }
}
