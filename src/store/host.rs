//! Binding hosts: the Worker scripts, in tenantry's dispatch namespace, that hold tenant D1
//! bindings so the main Worker holds none. This module owns the host's code (uploaded by the
//! control plane), its upload metadata and its name scheme. The SQL protocol between the main
//! Worker and a host is JavaScript on both ends (`host/host.mjs`, `host/client.mjs`). Workers-free.

use serde_json::{json, Value};

/// The host's code, uploaded as its only module.
pub const SOURCE: &str = include_str!("../../host/host.mjs");
/// The module's name in the upload.
pub const MODULE: &str = "host.mjs";
/// The code version `SOURCE` declares (`const CODE`); a host whose recorded code differs is
/// uploaded again.
pub const CODE: &str = "host-2";
/// The compatibility date hosts are uploaded with.
pub const COMPATIBILITY_DATE: &str = "2026-11-01";

/// The sequence number of host `candidate` of the Worker `script`, if it is named like one:
/// `{script}-host-{seq:04}`, the name `ControlStore::place` gives a new host.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_declares_the_code_version() {
        assert!(SOURCE.contains(&format!("const CODE = \"{CODE}\";")));
    }

    #[test]
    fn host_names_give_their_number() {
        assert_eq!(seq_of("tenantry", "tenantry-host-0007"), Some(7));
        assert_eq!(seq_of("tenantry", "tenantry-host-12345"), Some(12345));
        for other in ["tenantry", "tenantry-host-7", "other-host-0007", "tenantry-host-00x7", "tenantry-hosts-0001"] {
            assert_eq!(seq_of("tenantry", other), None, "{other}");
        }
    }
}
