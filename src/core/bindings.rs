//! The Worker's binding set, derived rather than edited.
//!
//! The script-settings PATCH replaces the whole set, so tenantry never edits the current set in
//! place (two concurrent edits would lose one another's binding). The desired set is derived
//! from the control plane, every tenant that should be bound, plus the Worker's own bindings
//! (anything not named `TENANT_*`), which are passed through untouched as `inherit`.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::names::{BindingName, TENANT_BINDING_PREFIX};

/// A tenant database that should be bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantBinding {
    pub binding: BindingName,
    pub database_id: String,
}

/// How the current set differs from the desired tenant bindings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindingDiff {
    /// Wanted but not bound.
    pub missing: Vec<String>,
    /// Bound but not wanted (or no longer).
    pub extra: Vec<String>,
    /// Bound to another database than the control plane says.
    pub wrong_database: Vec<String>,
}

impl BindingDiff {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.wrong_database.is_empty()
    }
}

fn name(binding: &Value) -> Option<&str> {
    binding.get("name").and_then(Value::as_str)
}

fn is_tenant(binding: &Value) -> bool {
    name(binding).is_some_and(|n| n.starts_with(TENANT_BINDING_PREFIX))
}

/// The tenant bindings in `current`: name → database id.
fn current_tenants(current: &[Value]) -> BTreeMap<&str, Option<&str>> {
    current
        .iter()
        .filter(|b| is_tenant(b))
        .filter_map(|b| {
            let id = b.get("id").or_else(|| b.get("database_id")).and_then(Value::as_str);
            Some((name(b)?, id))
        })
        .collect()
}

/// The full binding list to send: the Worker's own bindings kept by name, then every wanted
/// tenant binding (sorted by name, so the same inputs always give the same body).
pub fn desired(current: &[Value], tenants: &[TenantBinding]) -> Vec<Value> {
    let own =
        current.iter().filter(|b| !is_tenant(b)).filter_map(name).map(|n| json!({ "type": "inherit", "name": n }));
    let mut wanted: Vec<&TenantBinding> = tenants.iter().collect();
    wanted.sort_by(|a, b| a.binding.cmp(&b.binding));
    wanted.dedup_by(|a, b| a.binding == b.binding);
    own.chain(wanted.into_iter().map(|t| json!({ "type": "d1", "name": t.binding.as_str(), "id": t.database_id })))
        .collect()
}

/// What separates `current` from binding exactly `tenants`.
pub fn diff(current: &[Value], tenants: &[TenantBinding]) -> BindingDiff {
    let bound = current_tenants(current);
    let mut out = BindingDiff::default();
    for t in tenants {
        match bound.get(t.binding.as_str()) {
            None => out.missing.push(t.binding.to_string()),
            Some(id) if *id != Some(t.database_id.as_str()) => out.wrong_database.push(t.binding.to_string()),
            Some(_) => {}
        }
    }
    // A set, not a scan per binding: a script holds thousands of tenant bindings.
    let wanted: std::collections::HashSet<&str> = tenants.iter().map(|t| t.binding.as_str()).collect();
    for name in bound.keys() {
        if !wanted.contains(*name) {
            out.extra.push((*name).to_owned());
        }
    }
    out.missing.sort();
    out.missing.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::slug::TenantSlug;

    fn tenant(slug: &str, id: &str) -> TenantBinding {
        TenantBinding { binding: BindingName::for_tenant(&TenantSlug::parse(slug).unwrap()), database_id: id.into() }
    }

    fn current() -> Vec<Value> {
        vec![
            json!({ "type": "plain_text", "name": "APEX", "text": "example.com" }),
            json!({ "type": "secret_text", "name": "ADMIN_TOKEN" }),
            json!({ "type": "d1", "name": "CONTROL_DB", "id": "control" }),
            json!({ "type": "r2_bucket", "name": "BACKUPS", "bucket_name": "b" }),
            json!({ "type": "d1", "name": "TENANT_ACME", "id": "db-acme", "database_id": "db-acme" }),
            json!({ "type": "d1", "name": "TENANT_GONE", "id": "db-gone" }),
        ]
    }

    #[test]
    fn desired_keeps_own_bindings_by_name_and_lists_exactly_the_wanted_tenants() {
        let want = [tenant("globex", "db-globex"), tenant("acme", "db-acme"), tenant("acme", "db-acme")];
        assert_eq!(
            desired(&current(), &want),
            vec![
                json!({ "type": "inherit", "name": "APEX" }),
                json!({ "type": "inherit", "name": "ADMIN_TOKEN" }),
                json!({ "type": "inherit", "name": "CONTROL_DB" }),
                json!({ "type": "inherit", "name": "BACKUPS" }),
                json!({ "type": "d1", "name": "TENANT_ACME", "id": "db-acme" }),
                json!({ "type": "d1", "name": "TENANT_GLOBEX", "id": "db-globex" }),
            ]
        );
    }

    #[test]
    fn desired_with_no_tenants_unbinds_them_all_and_keeps_the_rest() {
        let out = desired(&current(), &[]);
        assert_eq!(out.len(), 4);
        assert!(out.iter().all(|b| b["type"] == "inherit"));
    }

    #[test]
    fn diff_finds_missing_extra_and_rewired_bindings() {
        let want = [tenant("acme", "db-other"), tenant("globex", "db-globex")];
        assert_eq!(
            diff(&current(), &want),
            BindingDiff {
                missing: vec!["TENANT_GLOBEX".into()],
                extra: vec!["TENANT_GONE".into()],
                wrong_database: vec!["TENANT_ACME".into()],
            }
        );
        let exact = [tenant("acme", "db-acme"), tenant("gone", "db-gone")];
        assert!(diff(&current(), &exact).is_empty());
    }

    #[test]
    fn applying_desired_leaves_no_diff() {
        let want = [tenant("acme", "db-acme"), tenant("new-one", "db-new")];
        let next = desired(&current(), &want);
        // What the API holds after the PATCH: inherited bindings resolved, tenant bindings as sent.
        let after: Vec<Value> = next
            .iter()
            .map(|b| {
                if b["type"] == "inherit" {
                    current().into_iter().find(|c| c["name"] == b["name"]).unwrap()
                } else {
                    b.clone()
                }
            })
            .collect();
        assert!(diff(&after, &want).is_empty());
    }
}
