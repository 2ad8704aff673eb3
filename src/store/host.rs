//! Binding hosts: the Worker scripts, in tenantry's dispatch namespace, that hold tenant D1
//! bindings so the main Worker holds none. This module owns the host's code (uploaded by the
//! control plane), its name scheme, and the SQL protocol the main Worker speaks to it (encoded and
//! decoded here, sent by `edge::HostSql` over the dispatch binding). Workers-free.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::sql::{Outcome, SqlError, Statement};

/// The host's code, uploaded as its only module.
pub const SOURCE: &str = include_str!("../../host/host.mjs");
/// The module's name in the upload.
pub const MODULE: &str = "host.mjs";
/// The code version `SOURCE` declares (`const CODE`); a host whose recorded code differs is
/// uploaded again.
pub const CODE: &str = "host-1";
/// The compatibility date hosts are uploaded with.
pub const COMPATIBILITY_DATE: &str = "2026-11-01";

/// The name of host number `seq` of the Worker `script`: `tenantry-host-0001`.
pub fn name(script: &str, seq: i64) -> String {
    format!("{script}-host-{seq:04}")
}

/// The sequence number of a host named by [`name`] for `script`, if `candidate` is one.
pub fn seq_of(script: &str, candidate: &str) -> Option<i64> {
    let digits = candidate.strip_prefix(script)?.strip_prefix("-host-")?;
    (digits.len() >= 4 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok()).flatten()
}

/// The upload's `metadata` part: the module, and the binding list (a host's only bindings are its
/// tenants').
pub fn metadata(bindings: &[Value]) -> Value {
    json!({
        "main_module": MODULE,
        "compatibility_date": COMPATIBILITY_DATE,
        "bindings": bindings,
    })
}

/// The body of `POST /sql`.
pub fn request_body(binding: &str, statements: &[Statement]) -> String {
    let statements: Vec<Value> = statements
        .iter()
        .map(|s| json!({ "sql": s.sql, "params": s.params.iter().map(|p| p.to_json()).collect::<Vec<_>>() }))
        .collect();
    json!({ "binding": binding, "statements": statements }).to_string()
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    results: Option<Vec<Result_>>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Result_ {
    #[serde(default)]
    rows: Vec<Map<String, Value>>,
    #[serde(default)]
    changes: u64,
}

/// Decodes the host's answer (HTTP `status`, `body`) to `statements` results.
pub fn decode(host: &str, status: u16, body: &[u8]) -> Result<Vec<Outcome>, SqlError> {
    let answer: Answer = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(_) if status >= 500 || status == 404 => {
            // Not the host's own answer: the dispatcher's (no such script, or it failed to run).
            return Err(SqlError::unreachable(format!("binding host {host} answered HTTP {status}")));
        }
        Err(e) => return Err(SqlError::unreachable(format!("binding host {host}: unreadable answer: {e}"))),
    };
    match (status, answer.results, answer.error) {
        (200, Some(results), _) => {
            Ok(results.into_iter().map(|r| Outcome { rows: r.rows, changes: r.changes }).collect())
        }
        (404, _, Some(e)) if e == "not_bound" => {
            Err(SqlError::not_bound(format!("binding host {host} does not hold this tenant's binding")))
        }
        (400, _, Some(e)) => Err(SqlError::from_message(&e)),
        (status, _, e) => {
            Err(SqlError::unreachable(format!("binding host {host} answered HTTP {status}: {}", e.unwrap_or_default())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql;

    #[test]
    fn the_source_declares_the_code_version() {
        assert!(SOURCE.contains(&format!("const CODE = \"{CODE}\";")));
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(name("tenantry", 7), "tenantry-host-0007");
        assert_eq!(seq_of("tenantry", "tenantry-host-0007"), Some(7));
        assert_eq!(seq_of("tenantry", "tenantry-host-12345"), Some(12345));
        for other in ["tenantry", "tenantry-host-7", "other-host-0007", "tenantry-host-00x7", "tenantry-hosts-0001"] {
            assert_eq!(seq_of("tenantry", other), None, "{other}");
        }
    }

    #[test]
    fn requests_carry_the_binding_and_typed_params() {
        let body = request_body("TENANT_ACME", &[sql!("SELECT ?1, ?2", "a", 2_i64)]);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            json!({ "binding": "TENANT_ACME", "statements": [{ "sql": "SELECT ?1, ?2", "params": ["a", 2] }] })
        );
    }

    #[test]
    fn answers_decode_to_outcomes_or_typed_errors() {
        let ok = decode("h", 200, br#"{"results":[{"rows":[{"a":1}],"changes":0},{"rows":[],"changes":2}]}"#).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].rows[0]["a"], json!(1));
        assert_eq!(ok[1].changes, 2);
        let missing = decode("h", 404, br#"{"error":"not_bound"}"#).unwrap_err();
        assert!(missing.not_bound && !missing.unreachable);
        let refused = decode("h", 400, br#"{"error":"no such table: x"}"#).unwrap_err();
        assert!(!refused.not_bound && !refused.unreachable);
        assert_eq!(refused.message, "no such table: x");
        let gone = decode("h", 500, b"Worker not found").unwrap_err();
        assert!(gone.unreachable && !gone.not_bound);
    }
}
