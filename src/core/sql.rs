//! Splits a SQL text into statements: on `;` outside string literals, quoted identifiers,
//! comments and `CREATE TRIGGER ... BEGIN ... END` bodies. D1's binding runs one statement per
//! prepared statement, and a migration must run as one `batch` (one transaction) to be atomic.

/// The statements of `sql`, trimmed, without empty or comment-only ones.
pub fn split_statements(sql: &str) -> Vec<String> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i, mut depth, mut code) = (0, 0, 0usize, false);
    let mut push = |from: usize, to: usize, code: &mut bool| {
        let text = sql[from..to].trim();
        if *code && !text.is_empty() {
            out.push(text.to_owned());
        }
        *code = false;
    };
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..].find("*/").map_or(bytes.len(), |n| i + 2 + n + 2);
                continue;
            }
            b'\'' | b'"' | b'`' | b'[' => {
                let close = if c == b'[' { b']' } else { c };
                code = true;
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == close {
                        if close != b']' && bytes.get(i + 1) == Some(&close) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                continue;
            }
            _ if c.is_ascii_alphabetic() || c == b'_' => {
                let word_end =
                    sql[i..].find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_')).map_or(bytes.len(), |n| i + n);
                let preceded =
                    i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b'$');
                if !preceded {
                    let word = sql[i..word_end].to_ascii_uppercase();
                    if (word == "BEGIN" && is_trigger(&sql[start..i])) || (word == "CASE" && depth > 0) {
                        depth += 1;
                    } else if word == "END" && depth > 0 {
                        depth -= 1;
                    }
                }
                code = true;
                i = word_end;
                continue;
            }
            b';' if depth == 0 => {
                push(start, i, &mut code);
                start = i + 1;
            }
            _ if !c.is_ascii_whitespace() => code = true,
            _ => {}
        }
        i += 1;
    }
    push(start, bytes.len(), &mut code);
    out
}

/// Whether the statement text so far is a `CREATE [TEMP] TRIGGER` (its BEGIN opens a body).
fn is_trigger(statement: &str) -> bool {
    let words: Vec<String> = statement
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ")
        .split_whitespace()
        .take(3)
        .map(str::to_ascii_uppercase)
        .collect();
    matches!(words.as_slice(), [c, t, ..] if c == "CREATE" && t == "TRIGGER")
        || matches!(words.as_slice(), [c, tmp, t] if c == "CREATE" && (tmp == "TEMP" || tmp == "TEMPORARY") && t == "TRIGGER")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&str, &[&str])] = &[
            ("select 1; select 2;", &["select 1", "select 2"]),
            ("select 'a;b'; select \"x;y\"; -- c;\n", &["select 'a;b'", "select \"x;y\""]),
            ("-- only a comment\n", &[]),
            ("  ;  ; ", &[]),
            (
                "CREATE TRIGGER t AFTER INSERT ON x BEGIN UPDATE y SET a = CASE WHEN 1 THEN 2 END; DELETE FROM z; END; select 1",
                &["CREATE TRIGGER t AFTER INSERT ON x BEGIN UPDATE y SET a = CASE WHEN 1 THEN 2 END; DELETE FROM z; END", "select 1"],
            ),
            ("create temp trigger t after delete on x begin select 1; end;", &["create temp trigger t after delete on x begin select 1; end"]),
            ("/* a; */ select 1 /* ; */; select [a;b] from t", &["/* a; */ select 1 /* ; */", "select [a;b] from t"]),
            ("select 'it''s;'", &["select 'it''s;'"]),
            ("BEGIN TRANSACTION; select 1; COMMIT;", &["BEGIN TRANSACTION", "select 1", "COMMIT"]),
            ("select `a;b` from t", &["select `a;b` from t"]),
            ("select 'ünï;cödé' ; select 2", &["select 'ünï;cödé'", "select 2"]),
            ("select 1 as ending; select 2", &["select 1 as ending", "select 2"]),
        ];
        for (sql, want) in cases {
            assert_eq!(split_statements(sql), want.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{sql}");
        }
    }

    #[test]
    fn every_embedded_migration_splits_into_statements() {
        for m in crate::core::migrations::CONTROL.iter().chain(crate::core::migrations::TENANT) {
            let statements = split_statements(m.sql);
            assert!(!statements.is_empty(), "{}", m.name);
            assert!(statements.iter().all(|s| !s.ends_with(';')), "{}", m.name);
        }
    }
}
