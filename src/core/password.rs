//! Password hashes in PHC string format, PBKDF2-HMAC-SHA256:
//! `$pbkdf2-sha256$i=100000$<salt, base64>$<hash, base64>` (unpadded standard base64).
//!
//! The derivation itself runs at the edge through WebCrypto (native code, so 100 000 iterations
//! fit a Worker's CPU budget; 100 000 is also the most workerd's PBKDF2 accepts). This module
//! formats, parses and compares, so it is tested natively against the same algorithm.

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use subtle::ConstantTimeEq;

pub const ITERATIONS: u32 = 100_000;
pub const SALT_LEN: usize = 16;
pub const HASH_LEN: usize = 32;
const PREFIX: &str = "$pbkdf2-sha256$i=";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordHash {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub hash: Vec<u8>,
}

impl PasswordHash {
    pub fn encode(&self) -> String {
        format!(
            "{PREFIX}{}${}${}",
            self.iterations,
            STANDARD_NO_PAD.encode(&self.salt),
            STANDARD_NO_PAD.encode(&self.hash)
        )
    }

    pub fn parse(value: &str) -> Option<Self> {
        let rest = value.strip_prefix(PREFIX)?;
        let mut parts = rest.split('$');
        let iterations = parts.next()?.parse().ok().filter(|i| *i > 0)?;
        let salt = STANDARD_NO_PAD.decode(parts.next()?).ok()?;
        let hash = STANDARD_NO_PAD.decode(parts.next()?).ok()?;
        (parts.next().is_none() && !salt.is_empty() && hash.len() == HASH_LEN).then_some(Self {
            iterations,
            salt,
            hash,
        })
    }

    /// Compares `derived` (the same KDF over the candidate password) in constant time.
    pub fn matches(&self, derived: &[u8]) -> bool {
        self.hash.ct_eq(derived).into()
    }
}

/// Rules for a new password (the first admin's, and later any user's).
pub fn validate_new(password: &str) -> Result<(), &'static str> {
    let chars = password.chars().count();
    if chars < 10 {
        return Err("must be at least 10 characters");
    }
    if password.len() > 256 {
        return Err("must be at most 256 bytes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; HASH_LEN];
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, &mut out);
        out
    }

    #[test]
    fn the_algorithm_is_pbkdf2_hmac_sha256() {
        // RFC 7914 section 11 test vector (PBKDF2-HMAC-SHA256, c = 1, dkLen = 64, first 32 bytes).
        let out = pbkdf2(b"passwd", b"salt", 1);
        assert_eq!(out[..8], [0x55, 0xac, 0x04, 0x6e, 0x56, 0xe3, 0x08, 0x9f]);
    }

    #[test]
    fn encodes_parses_and_matches() {
        let salt = b"0123456789abcdef".to_vec();
        let hash = pbkdf2(b"correct horse battery", &salt, 1000);
        let stored = PasswordHash { iterations: 1000, salt: salt.clone(), hash }.encode();
        assert!(stored.starts_with("$pbkdf2-sha256$i=1000$"));
        let parsed = PasswordHash::parse(&stored).unwrap();
        assert!(parsed.matches(&pbkdf2(b"correct horse battery", &salt, parsed.iterations)));
        assert!(!parsed.matches(&pbkdf2(b"correct horse batterz", &salt, parsed.iterations)));
        assert!(!parsed.matches(b"short"));
    }

    #[test]
    fn rejects_malformed_hashes() {
        for bad in [
            "",
            "plain",
            "$pbkdf2-sha256$i=0$c2FsdA$aGFzaA",
            "$pbkdf2-sha256$i=10$c2FsdA$aGFzaA",
            "$bcrypt$x",
            "$pbkdf2-sha256$i=10$$",
        ] {
            assert_eq!(PasswordHash::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn new_password_rules() {
        assert!(validate_new("short").is_err());
        assert!(validate_new("long enough pw").is_ok());
        assert!(validate_new(&"x".repeat(300)).is_err());
        assert!(validate_new("ünïcödé-ok").is_ok());
    }
}
