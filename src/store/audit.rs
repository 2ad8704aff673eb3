//! A tenant's audit chain in its own database: sealing the rows written since the last pass, and
//! verifying a page of the log (with the tail and an anchor). The hashing and the walk are
//! `core::audit_chain`'s; this module only reads and writes rows. Generic over [`Sql`]: the
//! tenant's binding in the Worker, in-memory SQLite in native tests.
//!
//! **Why sealing after the write is safe.** Audit rows are inserted unsealed in the batch of the
//! write they record (SQLite has no SHA-256). Ids come from `AUTOINCREMENT` and every batch is one
//! transaction on a single-writer database, so rows commit in id order: once a pass has read the
//! rows up to some id, no row with a lower id can appear later (a rolled-back insert never
//! becomes visible, and `AUTOINCREMENT` never reuses an id). A pass chains the rows after the
//! last sealed one; each row's seal is a conditional `UPDATE` (still unsealed, no later row
//! sealed, the row before it holding the hash chained from), so concurrent passes, which compute
//! the same values, neither conflict nor fork the chain: the second one's updates change nothing.

use serde::{Deserialize, Serialize};

use super::sql::{Sql, SqlError, Statement};
use crate::core::audit_chain::{self, Anchor, AnchorStatus, Broken, ChainRow, Start, COLUMNS};
use crate::sql;

/// Rows one sealing pass chains (one batch of conditional updates).
pub const SEAL_BATCH: u32 = 100;

#[derive(Deserialize)]
struct IdHash {
    id: i64,
    /// Any value: a hash edited into a number is a wrong hash, not an unreadable row.
    hash: serde_json::Value,
}

impl IdHash {
    fn hash(self) -> Option<String> {
        match self.hash {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s),
            other => Some(other.to_string()),
        }
    }
}

#[derive(Deserialize)]
struct Seq {
    seq: Option<i64>,
}

/// Seals up to `passes` × [`SEAL_BATCH`] unsealed rows, in id order; how many this call sealed.
/// Stops early when nothing is left (or another pass got there first).
pub async fn seal<S: Sql>(db: &S, genesis: &str, passes: u32) -> Result<u64, SqlError> {
    let mut sealed = 0;
    for _ in 0..passes {
        let (changed, read) = seal_pass(db, genesis).await?;
        sealed += changed;
        if read < SEAL_BATCH as usize || changed == 0 {
            break;
        }
    }
    Ok(sealed)
}

/// One pass: the last sealed row and the rows after it (one read), then their seals (one batch).
/// Returns (rows sealed, rows read).
async fn seal_pass<S: Sql>(db: &S, genesis: &str) -> Result<(u64, usize), SqlError> {
    let (updates, read) = plan_seal(db, genesis).await?;
    if updates.is_empty() {
        return Ok((0, read));
    }
    let outcomes = db.batch(updates).await?;
    Ok((outcomes.iter().map(|o| o.changes).sum(), read))
}

/// A pass's read and what it would write: the conditional updates sealing the rows after the last
/// sealed one (at most [`SEAL_BATCH`]), and how many rows it read. Public so tests can interleave
/// two passes.
pub async fn plan_seal<S: Sql>(db: &S, genesis: &str) -> Result<(Vec<Statement>, usize), SqlError> {
    let read = db
        .batch(vec![
            sql!("SELECT id, hash FROM audit_log WHERE hash IS NOT NULL ORDER BY id DESC LIMIT 1"),
            sql!(
                format!(
                    "SELECT {COLUMNS} FROM audit_log WHERE id > coalesce((SELECT max(id) FROM audit_log \
                     WHERE hash IS NOT NULL), 0) ORDER BY id LIMIT ?1"
                ),
                SEAL_BATCH
            ),
        ])
        .await?;
    let [tip, rows] = read.as_slice() else {
        return Err(SqlError::new(format!("the seal read returned {} results", read.len())));
    };
    let tip = tip.first::<IdHash>()?.and_then(IdHash::hash);
    let rows = rows.rows::<ChainRow>()?;
    let seals = audit_chain::seal(tip.as_deref(), genesis, &rows);
    let updates = seals
        .iter()
        .map(|s| {
            let base = "UPDATE audit_log SET prev_hash = ?2, hash = ?3 WHERE id = ?1 AND hash IS NULL \
                        AND NOT EXISTS (SELECT 1 FROM audit_log WHERE id > ?1 AND hash IS NOT NULL)";
            match &s.after {
                Some(after) => sql!(
                    format!("{base} AND (SELECT hash FROM audit_log WHERE id < ?1 ORDER BY id DESC LIMIT 1) = ?4"),
                    s.id,
                    s.prev_hash.as_str(),
                    s.hash.as_str(),
                    after.as_str()
                ),
                None => sql!(
                    format!("{base} AND NOT EXISTS (SELECT 1 FROM audit_log WHERE id < ?1)"),
                    s.id,
                    s.prev_hash.as_str(),
                    s.hash.as_str()
                ),
            }
        })
        .collect::<Vec<Statement>>();
    Ok((updates, rows.len()))
}

/// The anchor a verification checked, and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct AnchorView {
    pub last_id: i64,
    pub hash: String,
    pub anchored_at: String,
    pub status: AnchorStatus,
}

/// A verification of one page of a tenant's audit log.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Nothing broken was found: not in this page's rows, not in the anchor, and (on the last
    /// page) not at the tail.
    pub ok: bool,
    /// Rows checked in this page.
    pub checked: usize,
    /// The last row of this page whose link checked out.
    pub sealed_through: Option<i64>,
    /// Rows at the end of the log not sealed yet.
    pub unsealed: usize,
    pub first_broken: Option<Broken>,
    pub anchor: Option<AnchorView>,
    /// Give back as `cursor` to verify the next page (after a broken link too: the walk then
    /// goes on from the row where it stopped). `None`: this page reached the end of the log.
    pub next_cursor: Option<i64>,
    /// The chain's head (last sealed row and its hash) when this page reached the end of the log
    /// and found nothing broken: what an anchor may record.
    #[serde(skip)]
    pub head: Option<(i64, String)>,
    /// The last row of this page that checked out and its hash, when nothing in the page (nor the
    /// anchor) is broken, whether or not the page reached the end: a checkpoint the scheduled
    /// anchoring moves its anchor to, page by page.
    #[serde(skip)]
    pub page_head: Option<(i64, String)>,
}

/// Verifies up to `limit` rows after row `cursor` (from the first row when `None`), the tail
/// when the page reaches the end, and `anchor` if there is one.
pub async fn verify<S: Sql>(
    db: &S,
    genesis: &str,
    cursor: Option<i64>,
    limit: u32,
    anchor: Option<&Anchor>,
) -> Result<Report, SqlError> {
    let after = cursor.unwrap_or(0);
    let read = db
        .batch(vec![
            sql!("SELECT id, hash FROM audit_log WHERE id <= ?1 ORDER BY id DESC LIMIT 1", after),
            sql!(format!("SELECT {COLUMNS} FROM audit_log WHERE id > ?1 ORDER BY id LIMIT ?2"), after, limit + 1),
            sql!("SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'"),
            sql!("SELECT max(id) AS seq FROM audit_log"),
            sql!("SELECT id, hash FROM audit_log WHERE id = ?1", anchor.map_or(0, |a| a.last_id)),
        ])
        .await?;
    let [before, rows, sequence, last, anchored] = read.as_slice() else {
        return Err(SqlError::new(format!("the verification read returned {} results", read.len())));
    };
    let start = match before.first::<IdHash>()? {
        Some(row) => Start { id: row.id, hash: row.hash() },
        None => Start::genesis(genesis),
    };
    let mut rows = rows.rows::<ChainRow>()?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let walk = audit_chain::verify(&start, &rows);
    let at_end = !more && walk.first_broken.is_none();
    let tail = if at_end {
        audit_chain::tail_missing(
            last.first::<Seq>()?.and_then(|s| s.seq),
            sequence.first::<Seq>()?.and_then(|s| s.seq),
        )
    } else {
        None
    };
    let anchor_view = anchor.map(|a| {
        let found = anchored.first::<IdHash>().ok().flatten().map(IdHash::hash);
        let status = audit_chain::anchor_status(a, found.as_ref().map(Option::as_deref));
        (a, status)
    });
    let anchor_broken = anchor_view.and_then(|(a, status)| audit_chain::anchor_broken(a, status));
    let first_broken = walk.first_broken.clone().or(tail).or(anchor_broken.clone());
    let head = match (&first_broken, at_end, walk.sealed_through, &walk.head_hash) {
        (None, true, Some(id), Some(hash)) => Some((id, hash.clone())),
        _ => None,
    };
    let page_head = match (&walk.first_broken, &anchor_broken, walk.sealed_through, &walk.head_hash) {
        (None, None, Some(id), Some(hash)) => Some((id, hash.clone())),
        _ => None,
    };
    let next_cursor = if more || walk.first_broken.is_some() {
        walk.last_id.filter(|id| more || Some(*id) < last.first::<Seq>().ok().flatten().and_then(|s| s.seq))
    } else {
        None
    };
    Ok(Report {
        ok: first_broken.is_none(),
        checked: walk.checked,
        sealed_through: walk.sealed_through,
        unsealed: walk.unsealed,
        first_broken,
        anchor: anchor_view.map(|(a, status)| AnchorView {
            last_id: a.last_id,
            hash: a.hash.clone(),
            anchored_at: a.anchored_at.clone(),
            status,
        }),
        next_cursor,
        head,
        page_head,
    })
}
