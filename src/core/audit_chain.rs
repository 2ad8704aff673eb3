//! The tenant audit log's hash chain: how a row is hashed, how unsealed rows are chained on, and
//! how a stretch of the log is checked, naming the first broken link and why.
//!
//! Each row's `hash` is the SHA-256 (hex) of a canonical JSON array of the row's content, its id
//! and `prev_hash`, the hash of the row before it (for the first row, the tenant's [`genesis`]).
//! So changing any row, deleting one, or moving one to another id breaks the chain at that row,
//! unless every later hash is recomputed too: that is what an anchor (a head recorded outside the
//! tenant's database, [`anchor_status`]) catches.
//!
//! Rows are written unsealed (`hash` NULL: SQLite has no SHA-256, and the row is inserted in the
//! same statement batch as the write it records) and sealed shortly after, in id order
//! ([`seal`]). Pure logic: the storage layer reads and writes the rows.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::digest::sha256_hex;

/// Tags the encoding, so a later format can never produce the same bytes.
const VERSION: &str = "tenantry.audit.v1";

/// The `prev_hash` of a tenant's first audit row: bound to the tenant, so another tenant's log
/// copied in does not verify.
pub fn genesis(slug: &str) -> String {
    sha256_hex(format!("tenantry/audit/v1/genesis/{slug}").as_bytes())
}

/// One audit row as stored. The content columns are kept as the JSON values the database gave
/// (a row edited to hold another type must still be read, and then fails its hash); `prev_hash`
/// and `hash` are `None` while the row is unsealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainRow {
    pub id: i64,
    pub at: Value,
    pub actor_id: Value,
    pub actor_email: Value,
    pub action: Value,
    pub target: Value,
    pub request_id: Value,
    pub detail: Value,
    #[serde(default, deserialize_with = "text")]
    pub prev_hash: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub hash: Option<String>,
}

/// The columns [`ChainRow`] reads, in a `SELECT`.
pub const COLUMNS: &str = "id, at, actor_id, actor_email, action, target, request_id, detail, prev_hash, hash";

/// A text column read leniently: NULL is `None`, any other value its text (a number written into
/// a hash column is then simply a wrong hash, not an unreadable row).
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}

/// The same number whichever way the database handed it over (D1 gives JavaScript numbers, SQLite
/// integers): integral values as integers.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Number(n) if n.as_i64().is_none() && n.as_u64().is_none() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => Value::from(f as i64),
            _ => v.clone(),
        },
        _ => v.clone(),
    }
}

/// The bytes a row's hash is taken over: `[version, id, at, actor_id, actor_email, action,
/// target, request_id, detail, prev_hash]` as compact JSON (strings escaped, so no two rows
/// encode alike).
pub fn encode(row: &ChainRow, prev_hash: &str) -> String {
    let fields = [
        Value::from(VERSION),
        Value::from(row.id),
        canonical(&row.at),
        canonical(&row.actor_id),
        canonical(&row.actor_email),
        canonical(&row.action),
        canonical(&row.target),
        canonical(&row.request_id),
        canonical(&row.detail),
        Value::from(prev_hash),
    ];
    Value::Array(fields.to_vec()).to_string()
}

/// The hash row `row` has when chained to `prev_hash`.
pub fn row_hash(row: &ChainRow, prev_hash: &str) -> String {
    sha256_hex(encode(row, prev_hash).as_bytes())
}

/// What sealing one row writes, and the condition it is written under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub id: i64,
    pub prev_hash: String,
    pub hash: String,
    /// The hash the row just before this one (by id) must have for the seal to hold; `None`: no
    /// row may come before it (it is the first row, chained to the genesis).
    pub after: Option<String>,
}

/// Chains `rows` (the rows after the last sealed one, by id, all unsealed) on from `tip`, the
/// last sealed row's hash (`None`: nothing is sealed yet, the first row chains to `genesis`).
/// Stops at a row that is sealed already (the caller read a stale view).
pub fn seal(tip: Option<&str>, genesis: &str, rows: &[ChainRow]) -> Vec<Seal> {
    let mut after = tip.map(str::to_owned);
    let mut seals = Vec::with_capacity(rows.len());
    for row in rows {
        if row.hash.is_some() {
            break;
        }
        let prev_hash = after.clone().unwrap_or_else(|| genesis.to_owned());
        let hash = row_hash(row, &prev_hash);
        seals.push(Seal { id: row.id, prev_hash, hash: hash.clone(), after: after.replace(hash) });
    }
    seals
}

/// Why the chain is broken at a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The row's content (or its `prev_hash`) is not what its hash was taken over: the row was
    /// edited after it was sealed, or moved to another id.
    ContentChanged,
    /// The row's `prev_hash` is not the hash of the row before it: that row was edited and
    /// re-hashed, or this one re-hashed onto another chain.
    LinkBroken,
    /// Rows are missing before this one (deleted): `id` is the first missing id.
    RowsMissing,
    /// The row is not sealed but a later one is: its hash was removed (to have it sealed again
    /// with other content).
    HashRemoved,
    /// The newest rows are gone: the database allocated ids past the last row (`id` is the first
    /// missing one).
    TailMissing,
    /// The row an anchor recorded no longer has the anchored hash (or is gone): the log was
    /// rewritten from there on, hashes and all.
    AnchorMismatch,
}

/// The first broken link found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    pub id: i64,
    pub reason: Reason,
    pub message: String,
}

/// Where a walk starts: the row just before the first row walked (its id and stored hash), or the
/// genesis (id 0) when walking from the first row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub id: i64,
    pub hash: Option<String>,
}

impl Start {
    pub fn genesis(genesis: &str) -> Self {
        Self { id: 0, hash: Some(genesis.to_owned()) }
    }
}

/// What a walk over a stretch of the log found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Walk {
    /// Rows looked at.
    pub checked: usize,
    /// The last sealed row that checked out (the chain is whole up to it).
    pub sealed_through: Option<i64>,
    /// Its hash.
    #[serde(skip)]
    pub head_hash: Option<String>,
    /// Rows not sealed yet (at the end of the log; sealing catches up within seconds).
    pub unsealed: usize,
    pub first_broken: Option<Broken>,
    /// The last row looked at.
    pub last_id: Option<i64>,
}

/// Walks `rows` (consecutive rows of the log, by id) from `start`, and stops at the first broken
/// link. Ids are consecutive: `AUTOINCREMENT` never skips one (an insert rolled back gives its id
/// back with its transaction), so a gap is rows deleted, even where the chain was sealed across it
/// (rows deleted at the end before newer ones were sealed).
pub fn verify(start: &Start, rows: &[ChainRow]) -> Walk {
    let mut walk = Walk::default();
    let (mut prev_id, mut prev_hash) = (start.id, start.hash.clone());
    let mut unsealed_from: Option<i64> = None;
    for row in rows {
        walk.checked += 1;
        walk.last_id = Some(row.id);
        if row.id != prev_id + 1 {
            walk.first_broken = Some(Broken {
                id: prev_id + 1,
                reason: Reason::RowsMissing,
                message: format!(
                    "rows {} to {} are missing: the log goes from row {prev_id} to row {}",
                    prev_id + 1,
                    row.id - 1,
                    row.id
                ),
            });
            return walk;
        }
        let Some(hash) = &row.hash else {
            unsealed_from.get_or_insert(row.id);
            walk.unsealed += 1;
            (prev_id, prev_hash) = (row.id, None);
            continue;
        };
        if let Some(first) = unsealed_from {
            walk.first_broken = Some(Broken {
                id: first,
                reason: Reason::HashRemoved,
                message: format!("row {first} is not sealed but row {} after it is: its hash was removed", row.id),
            });
            return walk;
        }
        let stored_prev = row.prev_hash.as_deref().unwrap_or("");
        if row_hash(row, stored_prev) != *hash {
            walk.first_broken = Some(Broken {
                id: row.id,
                reason: Reason::ContentChanged,
                message: format!("row {} does not match its hash: it was changed after it was sealed", row.id),
            });
            return walk;
        }
        if prev_hash.as_deref() != Some(stored_prev) {
            walk.first_broken = Some(Broken {
                id: row.id,
                reason: Reason::LinkBroken,
                message: format!(
                    "row {} was not chained to the row before it as that row is now: that row was rewritten",
                    row.id
                ),
            });
            return walk;
        }
        walk.sealed_through = Some(row.id);
        walk.head_hash = Some(hash.clone());
        (prev_id, prev_hash) = (row.id, Some(hash.clone()));
    }
    walk
}

/// The newest rows are missing when the table's AUTOINCREMENT counter (`sqlite_sequence`) is past
/// its last row: audit rows are never deleted, and a rolled-back insert gives its id back.
pub fn tail_missing(last_id: Option<i64>, sequence: Option<i64>) -> Option<Broken> {
    let last = last_id.unwrap_or(0);
    let seq = sequence?;
    (seq > last).then(|| Broken {
        id: last + 1,
        reason: Reason::TailMissing,
        message: format!("rows {} to {seq} are missing: the newest rows of the log were deleted", last + 1),
    })
}

/// A head of the chain recorded outside the tenant's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub last_id: i64,
    pub hash: String,
    /// When it was recorded (the control plane's clock, RFC 3339).
    pub anchored_at: String,
    /// The tenant's database was restored (or re-created) after the anchor was taken.
    pub restored_since: bool,
}

/// What an anchor says about the log now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnchorStatus {
    /// The anchored row still has the anchored hash.
    Held,
    /// It does not (or is gone): the log was rewritten.
    Broken,
    /// It does not, but the database was restored (or re-created) since the anchor was taken,
    /// which explains it: the restored log is checked on its own, and the next operator
    /// verification anchors it anew.
    AfterRestore,
}

/// Checks `anchor` against `found`, the stored hash of the anchored row (`None`: the row is gone;
/// `Some(None)`: it is there, unsealed).
pub fn anchor_status(anchor: &Anchor, found: Option<Option<&str>>) -> AnchorStatus {
    match found {
        Some(Some(hash)) if hash == anchor.hash => AnchorStatus::Held,
        _ if anchor.restored_since => AnchorStatus::AfterRestore,
        _ => AnchorStatus::Broken,
    }
}

/// The broken link an anchor reports, if it is broken.
pub fn anchor_broken(anchor: &Anchor, status: AnchorStatus) -> Option<Broken> {
    (status == AnchorStatus::Broken).then(|| Broken {
        id: anchor.last_id,
        reason: Reason::AnchorMismatch,
        message: format!(
            "row {} no longer has the hash recorded when the log was last anchored: the log was rewritten",
            anchor.last_id
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SLUG: &str = "acme";

    fn row(id: i64, action: &str) -> ChainRow {
        ChainRow {
            id,
            at: json!(format!("2026-01-01T00:00:{:02}.000Z", id % 60)),
            actor_id: json!(1),
            actor_email: json!("a@acme.test"),
            action: json!(action),
            target: json!(format!("project:{id}")),
            request_id: json!(format!("req-{id}")),
            detail: json!("{}"),
            prev_hash: None,
            hash: None,
        }
    }

    /// `n` rows with ids 1..=n, sealed.
    fn sealed(n: i64) -> Vec<ChainRow> {
        let mut rows: Vec<ChainRow> = (1..=n).map(|id| row(id, "project.create")).collect();
        let seals = seal(None, &genesis(SLUG), &rows);
        apply(&mut rows, &seals);
        rows
    }

    fn apply(rows: &mut [ChainRow], seals: &[Seal]) {
        for s in seals {
            let r = rows.iter_mut().find(|r| r.id == s.id).unwrap();
            r.prev_hash = Some(s.prev_hash.clone());
            r.hash = Some(s.hash.clone());
        }
    }

    fn walk(rows: &[ChainRow]) -> Walk {
        verify(&Start::genesis(&genesis(SLUG)), rows)
    }

    fn broken(rows: &[ChainRow]) -> Option<(i64, Reason)> {
        walk(rows).first_broken.map(|b| (b.id, b.reason))
    }

    /// Recomputes every hash from row index `from` on, as someone rewriting the log would.
    fn rehash_from(rows: &mut [ChainRow], from: usize) {
        for i in from..rows.len() {
            let prev = if i == 0 { genesis(SLUG) } else { rows[i - 1].hash.clone().unwrap() };
            rows[i].hash = Some(row_hash(&rows[i], &prev));
            rows[i].prev_hash = Some(prev);
        }
    }

    #[test]
    fn the_encoding_is_unambiguous_and_stable() {
        let mut a = row(1, "x");
        a.target = json!("a\",\"b");
        let mut b = row(1, "x");
        b.target = json!("a");
        b.request_id = json!("b");
        assert_ne!(encode(&a, "p"), encode(&b, "p"), "a quote in a value cannot shift fields");
        // D1 hands integers over as JavaScript numbers: 1.0 encodes as 1.
        let mut c = row(1, "x");
        c.actor_id = json!(1.0);
        assert_eq!(encode(&c, "p"), encode(&row(1, "x"), "p"));
        assert!(encode(&row(1, "x"), "p").starts_with("[\"tenantry.audit.v1\",1,"));
        assert_ne!(genesis("acme"), genesis("globex"), "the genesis is the tenant's");
    }

    #[test]
    fn sealing_chains_from_the_genesis_and_then_from_the_tip() {
        let g = genesis(SLUG);
        let mut rows: Vec<ChainRow> = (1..=3).map(|id| row(id, "a")).collect();
        let first = seal(None, &g, &rows[..2]);
        assert_eq!(first[0].prev_hash, g);
        assert_eq!(first[0].after, None, "the first row must have no row before it");
        assert_eq!(first[1].prev_hash, first[0].hash);
        assert_eq!(first[1].after.as_deref(), Some(first[0].hash.as_str()));
        apply(&mut rows, &first);
        // A later pass chains the rest on from the last sealed row.
        let tip = rows[1].hash.clone();
        let second = seal(tip.as_deref(), &g, &rows[2..]);
        assert_eq!(second[0].prev_hash, rows[1].hash.clone().unwrap());
        apply(&mut rows, &second);
        // Sealing the same rows twice gives the same values (concurrent sealers agree).
        assert_eq!(seal(None, &g, &(1..=3).map(|id| row(id, "a")).collect::<Vec<_>>())[2].hash, second[0].hash);
        let w = walk(&rows);
        assert_eq!((w.first_broken, w.sealed_through, w.checked, w.unsealed), (None, Some(3), 3, 0));
        // A row already sealed stops a pass.
        assert!(seal(None, &g, &rows).is_empty());
    }

    #[test]
    fn each_kind_of_tampering_is_found_at_its_row() {
        type Tamper = fn(&mut Vec<ChainRow>);
        type Found = Option<(i64, Reason)>;
        let cases: &[(&str, Tamper, Found)] = &[
            ("untouched", |_| {}, None),
            ("content edited", |r| r[4].detail = json!("{\"name\":\"other\"}"), Some((5, Reason::ContentChanged))),
            ("actor edited", |r| r[0].actor_email = json!("mallory@x.test"), Some((1, Reason::ContentChanged))),
            ("type changed", |r| r[2].actor_id = json!("1"), Some((3, Reason::ContentChanged))),
            ("hash edited", |r| r[3].hash = Some("0".repeat(64)), Some((4, Reason::ContentChanged))),
            ("hash made a number", |r| r[3].hash = Some("12".into()), Some((4, Reason::ContentChanged))),
            (
                "edited and re-hashed",
                |r| {
                    r[4].action = json!("nothing.happened");
                    let prev = r[4].prev_hash.clone().unwrap();
                    r[4].hash = Some(row_hash(&r[4], &prev));
                },
                Some((6, Reason::LinkBroken)),
            ),
            (
                "one row deleted",
                |r| {
                    r.remove(4);
                },
                Some((5, Reason::RowsMissing)),
            ),
            (
                "three rows deleted",
                |r| {
                    r.drain(2..5);
                },
                Some((3, Reason::RowsMissing)),
            ),
            (
                "first row deleted",
                |r| {
                    r.remove(0);
                },
                Some((1, Reason::RowsMissing)),
            ),
            (
                "two rows swapped",
                |r| {
                    let (a, b) = (r[3].clone(), r[4].clone());
                    r[3] = ChainRow { id: 4, ..b };
                    r[4] = ChainRow { id: 5, ..a };
                },
                Some((4, Reason::ContentChanged)),
            ),
            (
                "hash removed to be resealed",
                |r| {
                    r[2].hash = None;
                    r[2].prev_hash = None;
                    r[2].action = json!("rewritten");
                },
                Some((3, Reason::HashRemoved)),
            ),
            (
                "edited then every later hash recomputed",
                |r| {
                    r[4].detail = json!("{\"forged\":true}");
                    rehash_from(r, 4);
                },
                None,
            ),
            (
                "another tenant's log",
                |r| {
                    for x in r.iter_mut() {
                        x.prev_hash = None;
                        x.hash = None;
                    }
                    let seals = seal(None, &genesis("globex"), r);
                    apply(r, &seals);
                },
                Some((1, Reason::LinkBroken)),
            ),
        ];
        for (name, tamper, expected) in cases {
            let mut rows = sealed(8);
            tamper(&mut rows);
            assert_eq!(broken(&rows), *expected, "{name}");
        }
    }

    #[test]
    fn unsealed_rows_at_the_end_are_counted_not_broken() {
        let mut rows = sealed(4);
        rows.push(row(5, "a"));
        rows.push(row(6, "a"));
        let w = walk(&rows);
        assert_eq!((w.first_broken, w.sealed_through, w.unsealed, w.last_id), (None, Some(4), 2, Some(6)));
    }

    #[test]
    fn a_gap_is_missing_rows_even_where_the_chain_spans_it() {
        // Rows 5 and 6 deleted before the rows after them were sealed: the chain links 4 to 7.
        let mut rows: Vec<ChainRow> = [1, 2, 3, 4, 7, 8].iter().map(|&id| row(id, "a")).collect();
        let seals = seal(None, &genesis(SLUG), &rows);
        apply(&mut rows, &seals);
        assert_eq!(broken(&rows), Some((5, Reason::RowsMissing)));
        // Unsealed rows too.
        let mut rows = sealed(3);
        rows.push(row(5, "a"));
        assert_eq!(broken(&rows), Some((4, Reason::RowsMissing)));
    }

    #[test]
    fn a_page_starts_from_the_row_before_it() {
        let rows = sealed(10);
        let start = Start { id: 5, hash: rows[4].hash.clone() };
        let w = verify(&start, &rows[5..]);
        assert_eq!((w.first_broken, w.sealed_through, w.checked), (None, Some(10), 5));
        // The page's first row no longer follows the row before it.
        let wrong = Start { id: 5, hash: rows[3].hash.clone() };
        assert_eq!(verify(&wrong, &rows[5..]).first_broken.map(|b| (b.id, b.reason)), Some((6, Reason::LinkBroken)));
    }

    #[test]
    fn a_deleted_tail_shows_in_the_sequence() {
        assert_eq!(tail_missing(Some(10), Some(10)), None);
        assert_eq!(tail_missing(None, None), None, "an empty log");
        let b = tail_missing(Some(8), Some(10)).unwrap();
        assert_eq!((b.id, b.reason), (9, Reason::TailMissing));
        assert_eq!(tail_missing(None, Some(3)).map(|b| b.id), Some(1), "every row deleted");
    }

    #[test]
    fn an_anchor_catches_a_whole_tail_rewritten() {
        let rows = sealed(8);
        let anchor = Anchor {
            last_id: 8,
            hash: rows[7].hash.clone().unwrap(),
            anchored_at: "2026-01-01T00:00:00.000Z".into(),
            restored_since: false,
        };
        assert_eq!(anchor_status(&anchor, Some(rows[7].hash.as_deref())), AnchorStatus::Held);
        // Row 5 edited and every later hash recomputed: the chain alone checks out ...
        let mut forged = rows.clone();
        forged[4].detail = json!("{\"forged\":true}");
        rehash_from(&mut forged, 4);
        assert_eq!(broken(&forged), None);
        // ... the anchor does not.
        let status = anchor_status(&anchor, Some(forged[7].hash.as_deref()));
        assert_eq!(status, AnchorStatus::Broken);
        assert_eq!(anchor_broken(&anchor, status).map(|b| (b.id, b.reason)), Some((8, Reason::AnchorMismatch)));
        // The anchored row gone, or unsealed: broken too.
        assert_eq!(anchor_status(&anchor, None), AnchorStatus::Broken);
        assert_eq!(anchor_status(&anchor, Some(None)), AnchorStatus::Broken);
        // After a restore the same finding is explained, not tampering.
        let restored = Anchor { restored_since: true, ..anchor.clone() };
        assert_eq!(anchor_status(&restored, None), AnchorStatus::AfterRestore);
        assert_eq!(anchor_broken(&restored, AnchorStatus::AfterRestore), None);
        assert_eq!(anchor_status(&restored, Some(rows[7].hash.as_deref())), AnchorStatus::Held);
    }

    #[test]
    fn rows_read_from_the_database_deserialize_whatever_was_written() {
        let r: ChainRow = serde_json::from_value(json!({
            "id": 3, "at": "t", "actor_id": null, "actor_email": null, "action": "login.failed",
            "target": "email:x", "request_id": "r", "detail": "{}", "prev_hash": null, "hash": 42
        }))
        .unwrap();
        assert_eq!((r.prev_hash, r.hash), (None, Some("42".into())));
    }
}
