//! Validation of values both the admin API and the tenant API accept: email addresses and the
//! `{key: value}` settings patches. Each returns what is wrong in words; the HTTP layer turns
//! that into a 422 by field.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// An email address, trimmed.
pub fn valid_email(email: &str) -> Result<String, &'static str> {
    let email = email.trim();
    let (local, domain) = email.split_once('@').ok_or("must be an email address")?;
    let ok = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && !domain.contains('@');
    if ok {
        Ok(email.to_owned())
    } else {
        Err("must be an email address")
    }
}

/// Setting keys: lowercase, digits, `_` and `.`, starting with a letter, at most 64.
pub fn valid_setting_key(key: &str) -> bool {
    (1..=64).contains(&key.len())
        && key.starts_with(|c: char| c.is_ascii_lowercase())
        && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// Validates a `{key: value | null}` settings patch; values are JSON of at most 4 KiB.
/// A settings change: `(key, Some(json))` sets a key, `(key, None)` removes it.
pub type SettingChange = (String, Option<String>);

/// What is wrong, by field.
pub type FieldErrors = BTreeMap<String, String>;

pub fn settings_patch(body: &Map<String, Value>) -> Result<Vec<SettingChange>, FieldErrors> {
    let mut fields = BTreeMap::new();
    let mut changes = Vec::new();
    if body.is_empty() || body.len() > 100 {
        fields.insert("settings".to_owned(), "send 1 to 100 keys".to_owned());
    }
    for (key, value) in body {
        if !valid_setting_key(key) {
            fields.insert(key.clone(), "is not a valid setting key (a-z, 0-9, '_', '.'; at most 64)".into());
            continue;
        }
        let text = value.to_string();
        if text.len() > 4096 {
            fields.insert(key.clone(), "must be at most 4 KiB of JSON".into());
            continue;
        }
        changes.push((key.clone(), (!value.is_null()).then_some(text)));
    }
    if fields.is_empty() {
        Ok(changes)
    } else {
        Err(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for ok in ["a@b.co", "first.last+tag@example.co.uk"] {
            assert!(valid_email(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "a@b", "@b.co", "a b@c.co", "a@.co", "a@b.", "a@b@c.co", "a\tb@c.co"] {
            assert!(valid_email(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn settings_patches() {
        let body = |v: Value| v.as_object().unwrap().clone();
        let ok = settings_patch(&body(serde_json::json!({ "theme.color": "blue", "old": null }))).unwrap();
        assert_eq!(ok, vec![("old".to_owned(), None), ("theme.color".to_owned(), Some("\"blue\"".to_owned()))]);
        let errors = settings_patch(&body(serde_json::json!({ "Bad Key": 1, "big": "x".repeat(5000) }))).unwrap_err();
        assert_eq!(errors.keys().collect::<Vec<_>>(), ["Bad Key", "big"]);
        assert!(settings_patch(&Map::new()).unwrap_err().contains_key("settings"));
    }
}
