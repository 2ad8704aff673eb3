//! Roles and their permissions: validation shared by the control plane (system roles) and the
//! tenants (their own roles).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleSpec {
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
}

pub fn valid_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

pub fn valid_permission(p: &str) -> bool {
    (1..=64).contains(&p.len())
        && p.starts_with(|c: char| c.is_ascii_lowercase())
        && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.:*-".contains(&b))
}

/// The fields of a role body; absent fields are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub permissions: Option<Vec<String>>,
}

/// Parses a role body. `name` is taken from the body when creating (and refused on updates: it
/// is the role's identity).
pub fn parse(body: &Map<String, Value>, creating: bool) -> Result<RoleChanges, BTreeMap<String, String>> {
    let mut errors = BTreeMap::new();
    let (mut name, mut description, mut permissions) = (None, None, None);
    for (key, value) in body {
        match (key.as_str(), value) {
            ("name", Value::String(n)) if creating && valid_name(n) => name = Some(n.clone()),
            ("name", _) if creating => drop(
                errors.insert("name".into(), "must be 1 to 40 of a-z, 0-9, '_' or '-', starting with a letter".into()),
            ),
            ("description", Value::String(d)) if d.chars().count() <= 500 => description = Some(d.clone()),
            ("description", _) => {
                drop(errors.insert("description".into(), "must be a string of at most 500 characters".into()))
            }
            ("permissions", Value::Array(items)) if items.len() <= 100 => {
                let list: Vec<String> = items
                    .iter()
                    .filter_map(|i| i.as_str().filter(|p| valid_permission(p)).map(str::to_owned))
                    .collect();
                if list.len() == items.len() {
                    let mut list = list;
                    list.sort();
                    list.dedup();
                    permissions = Some(list);
                } else {
                    errors.insert(
                        "permissions".into(),
                        "each permission is 1 to 64 of a-z, 0-9, '_', '.', ':', '*' or '-'".into(),
                    );
                }
            }
            ("permissions", _) => {
                drop(errors.insert("permissions".into(), "must be an array of at most 100 strings".into()))
            }
            _ => drop(errors.insert(key.clone(), "is not a known field".into())),
        }
    }
    if creating && name.is_none() && !errors.contains_key("name") {
        errors.insert("name".into(), "is required".into());
    }
    if errors.is_empty() {
        Ok(RoleChanges { name, description, permissions })
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn names_and_permissions() {
        for ok in ["admin", "auditor", "read-only", "tier_2"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "Admin", "1st", "a b", &"a".repeat(41)] {
            assert!(!valid_name(bad), "{bad}");
        }
        for ok in ["projects:read", "users.*", "billing:write"] {
            assert!(valid_permission(ok), "{ok}");
        }
        for bad in ["", "Projects:read", "a b", "drop;table"] {
            assert!(!valid_permission(bad), "{bad}");
        }
    }

    #[test]
    fn parses_and_normalises_permissions() {
        let got =
            parse(&body(json!({ "name": "auditor", "permissions": ["b:read", "a:read", "b:read"] })), true).unwrap();
        assert_eq!(
            got,
            RoleChanges {
                name: Some("auditor".into()),
                description: None,
                permissions: Some(vec!["a:read".into(), "b:read".into()])
            }
        );
        let errors = parse(&body(json!({ "permissions": "x", "extra": 1 })), true).unwrap_err();
        assert_eq!(errors.keys().collect::<Vec<_>>(), ["extra", "name", "permissions"]);
        assert!(parse(&body(json!({ "name": "x" })), false).is_err(), "a name cannot be changed");
    }
}
