//! Access tokens: HS256 JWTs (jwt-compact) signed with a key derived per tenant.
//!
//! The signing key of tenant `t` under master secret `m` is `HMAC-SHA256(m, "tenantry/jwt/v1/" + t)`.
//! A token minted for one tenant therefore cannot verify for another even with its claims edited:
//! the verifier derives the key from the claimed tenant, then requires that tenant to be the routed
//! one (a valid token for another tenant is a 403, anything unverifiable a 401).
//!
//! Only `HS256` is accepted (no `none`, no algorithm switching: jwt-compact compares the header's
//! `alg` with the verifier's). Every token names its master key in `kid`; the key ring holds the
//! current key and, during a rotation, the previous one, so tokens issued before the rotation stay
//! valid until they expire (the grace period is how long the previous key stays configured).
//!
//! Besides the signature and `exp` (with a 30 s leeway), a token must carry `iat` (not in the
//! future) and live at most [`TOKEN_TTL_SECONDS`] (`exp - iat`); an `nbf` must have been reached;
//! and a header with `crit` is refused, since this service understands no extension.

use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use jwt_compact::alg::{Hs256, Hs256Key};
use jwt_compact::prelude::*;
use jwt_compact::ValidationError;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::cache::TtlCache;
use super::slug::TenantSlug;

/// A user's role inside a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "member" => Some(Self::Member),
            _ => None,
        }
    }
}

/// The claims tenantry puts in a token (beside `exp` and `iat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantClaims {
    pub tenant: String,
    /// The id of the tenant database the token was issued for: a tenant deleted and created again
    /// under the same slug has a new database, and the old tenant's tokens do not open it.
    pub db: String,
    /// The user's id in the tenant database.
    pub sub: i64,
    pub role: Role,
}

/// One master key: its id (the token's `kid`) and secret.
#[derive(Clone)]
pub struct MasterKey {
    pub kid: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({}, ***)", self.kid)
    }
}

impl MasterKey {
    /// Parses `kid:secret`; the secret must be at least 32 bytes.
    pub fn parse(value: &str) -> Result<Self, &'static str> {
        let (kid, secret) = value.split_once(':').ok_or("a key is written `kid:secret`")?;
        if kid.is_empty() || kid.len() > 64 || !kid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a key id is 1 to 64 letters, digits, '-' or '_'");
        }
        if secret.len() < 32 {
            return Err("a key secret must be at least 32 bytes");
        }
        Ok(Self { kid: kid.to_owned(), secret: secret.as_bytes().to_vec() })
    }

    fn tenant_key(&self, tenant: &str) -> Hs256Key {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes keys of any length");
        mac.update(b"tenantry/jwt/v1/");
        mac.update(tenant.as_bytes());
        Hs256Key::new(mac.finalize().into_bytes())
    }
}

/// The keys tokens are signed and checked with.
#[derive(Debug, Clone)]
pub struct KeyRing {
    pub current: MasterKey,
    pub previous: Option<MasterKey>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("an Authorization: Bearer token is required")]
    Missing,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("the token's key is unknown or retired")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's lifetime is longer than this service issues, or unknown")]
    Lifetime,
    #[error("the token has a critical header extension this service does not understand")]
    CriticalExtension,
    #[error("the token belongs to another tenant")]
    WrongTenant,
}

impl AuthError {
    /// 403 for a genuine token of another tenant; 401 for everything else.
    pub fn status(&self) -> u16 {
        if *self == Self::WrongTenant {
            403
        } else {
            401
        }
    }
}

/// Token lifetime.
pub const TOKEN_TTL_SECONDS: i64 = 3600;
const LEEWAY_SECONDS: i64 = 30;

fn at(now_ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(now_ms).unwrap_or_default()
}

impl KeyRing {
    fn key(&self, kid: &str) -> Option<&MasterKey> {
        std::iter::once(&self.current).chain(self.previous.as_ref()).find(|k| k.kid == kid)
    }

    /// A token for `claims`, valid for [`TOKEN_TTL_SECONDS`] from `now_ms`, signed with the
    /// current key. Returns the token and its expiry (Unix seconds).
    pub fn issue(&self, claims: &TenantClaims, now_ms: i64) -> (String, i64) {
        let options = TimeOptions::new(Duration::seconds(LEEWAY_SECONDS), move || at(now_ms));
        let claims =
            Claims::new(claims.clone()).set_duration_and_issuance(&options, Duration::seconds(TOKEN_TTL_SECONDS));
        let expires = claims.expiration.map_or(0, |e| e.timestamp());
        let header = Header::empty().with_key_id(self.current.kid.clone()).with_token_type("JWT");
        let key = self.current.tenant_key(&claims.custom.tenant);
        let token = Hs256.token(&header, &claims, &key).expect("HS256 signing with a valid key cannot fail");
        (token, expires)
    }

    /// Verifies `token` for the tenant the request was routed to.
    pub fn verify(&self, token: &str, routed: &TenantSlug, now_ms: i64) -> Result<TenantClaims, AuthError> {
        self.verify_until(token, routed, now_ms).map(|(claims, _)| claims)
    }

    /// [`KeyRing::verify`], also returning when the token expires (Unix ms).
    pub fn verify_until(
        &self,
        token: &str,
        routed: &TenantSlug,
        now_ms: i64,
    ) -> Result<(TenantClaims, i64), AuthError> {
        let untrusted = UntrustedToken::<HeaderExtensions>::try_from(token).map_err(|_| AuthError::Malformed)?;
        if untrusted.algorithm() != "HS256" {
            return Err(AuthError::Algorithm);
        }
        if untrusted.header().other_fields.crit {
            return Err(AuthError::CriticalExtension);
        }
        let kid = untrusted.header().key_id.as_deref().ok_or(AuthError::UnknownKey)?;
        let master = self.key(kid).ok_or(AuthError::UnknownKey)?;
        let claimed: Claims<TenantClaims> =
            untrusted.deserialize_claims_unchecked().map_err(|_| AuthError::Malformed)?;
        let tenant = TenantSlug::parse(&claimed.custom.tenant).map_err(|_| AuthError::Malformed)?;
        let verified = Hs256
            .validator::<TenantClaims>(&master.tenant_key(tenant.as_str()))
            .validate(&untrusted)
            .map_err(|e| match e {
                ValidationError::AlgorithmMismatch { .. } => AuthError::Algorithm,
                ValidationError::InvalidSignature | ValidationError::MalformedSignature(_) => AuthError::Signature,
                _ => AuthError::Malformed,
            })?;
        let options = TimeOptions::new(Duration::seconds(LEEWAY_SECONDS), move || at(now_ms));
        let checked = verified.claims();
        checked.validate_expiration(&options).map_err(|e| match e {
            ValidationError::Expired => AuthError::Expired,
            _ => AuthError::Malformed,
        })?;
        // `nbf` is optional; when present it must be reached (within the leeway).
        if checked.not_before.is_some() {
            checked.validate_maturity(&options).map_err(|_| AuthError::NotYetValid)?;
        }
        // `iat` is required, not in the future, and no token lives longer than `issue` makes them:
        // a leaked signing key cannot mint tokens that outlive its rotation.
        let issued = checked.issued_at.ok_or(AuthError::Lifetime)?;
        let leeway = Duration::seconds(LEEWAY_SECONDS);
        if issued > at(now_ms) + leeway {
            return Err(AuthError::NotYetValid);
        }
        let expires = checked.expiration.ok_or(AuthError::Malformed)?;
        if expires - issued > Duration::seconds(TOKEN_TTL_SECONDS) + leeway {
            return Err(AuthError::Lifetime);
        }
        if &tenant != routed {
            return Err(AuthError::WrongTenant);
        }
        let expires_ms = verified.claims().expiration.map_or(0, |e| e.timestamp_millis());
        Ok((verified.claims().custom.clone(), expires_ms))
    }
}

/// The header fields jwt-compact leaves to the application (`Header::other_fields`): only
/// whether `crit` is there. We understand no extension, so a token naming any critical one is
/// refused (RFC 7515 §4.1.11), whatever the list holds, `null` and `[]` included.
#[derive(Debug, Clone, Deserialize)]
struct HeaderExtensions {
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(value: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(value).map(|_| true)
}

/// Tokens an isolate has verified, so a client's next request with the same token costs a map
/// lookup instead of base64, JSON and two HMACs.
///
/// Only the exact token string that passed [`KeyRing::verify_until`] is found; its expiry and its
/// tenant are still checked on every use. Key changes (a rotation) are secret changes, which start
/// new isolates, so a cached verification never outlives the keys that made it.
pub struct TokenCache {
    entries: TtlCache<String, (TenantClaims, i64)>,
}

impl TokenCache {
    /// Entries are kept at most `ttl_ms` (and never past the token's expiry).
    pub fn new(capacity: usize, ttl_ms: f64) -> Self {
        Self { entries: TtlCache::new(capacity, ttl_ms) }
    }

    /// The claims of `token` for the routed tenant: from the cache, or verified by `ring` (and
    /// then cached).
    pub fn verify(
        &mut self,
        ring: &KeyRing,
        token: &str,
        routed: &TenantSlug,
        now_ms: i64,
    ) -> Result<TenantClaims, AuthError> {
        if let Some((claims, expires_ms)) = self.entries.get(token, now_ms as f64) {
            if now_ms > expires_ms + LEEWAY_SECONDS * 1000 {
                self.entries.remove(token);
                return Err(AuthError::Expired);
            }
            if claims.tenant != routed.as_str() {
                return Err(AuthError::WrongTenant);
            }
            return Ok(claims);
        }
        let (claims, expires_ms) = ring.verify_until(token, routed, now_ms)?;
        self.entries.insert(token.to_owned(), (claims.clone(), expires_ms), now_ms as f64);
        Ok(claims)
    }
}

/// The token in an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn ring() -> KeyRing {
        KeyRing {
            current: MasterKey::parse("k2:0123456789abcdef0123456789abcdef-new").unwrap(),
            previous: Some(MasterKey::parse("k1:0123456789abcdef0123456789abcdef-old").unwrap()),
        }
    }

    fn slug(s: &str) -> TenantSlug {
        TenantSlug::parse(s).unwrap()
    }

    fn claims(tenant: &str) -> TenantClaims {
        TenantClaims { tenant: tenant.into(), db: format!("db-of-{tenant}"), sub: 7, role: Role::Admin }
    }

    /// Re-encodes the payload of `token` with `edit` applied, keeping header and signature.
    fn tamper(token: &str, edit: impl Fn(&mut serde_json::Value)) -> String {
        let parts: Vec<&str> = token.split('.').collect();
        let mut payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        edit(&mut payload);
        format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(payload.to_string()), parts[2])
    }

    fn unsigned(header: serde_json::Value, payload: serde_json::Value) -> String {
        format!("{}.{}.", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(payload.to_string()))
    }

    #[test]
    fn the_token_cache_answers_only_for_the_exact_token_and_still_checks_expiry_and_tenant() {
        let mut cache = TokenCache::new(10, 60_000.0);
        let (token, exp) = ring().issue(&claims("acme"), NOW);
        assert_eq!(cache.verify(&ring(), &token, &slug("acme"), NOW), Ok(claims("acme")));
        // Cached: a ring that could verify nothing still accepts the exact token...
        let stranger =
            KeyRing { current: MasterKey::parse("k9:0123456789abcdef0123456789abcdef-x").unwrap(), previous: None };
        assert_eq!(cache.verify(&stranger, &token, &slug("acme"), NOW + 1), Ok(claims("acme")));
        // ...but not for another tenant, and not an edited copy of it.
        assert_eq!(cache.verify(&stranger, &token, &slug("globex"), NOW + 1), Err(AuthError::WrongTenant));
        let edited = tamper(&token, |p| p["role"] = "admin".into());
        assert_ne!(edited, token);
        assert_eq!(cache.verify(&stranger, &edited, &slug("acme"), NOW + 1), Err(AuthError::UnknownKey));
        // And never past the token's expiry, even within the cache's own TTL.
        let mut long = TokenCache::new(10, 10.0 * TOKEN_TTL_SECONDS as f64 * 1000.0);
        assert!(long.verify(&ring(), &token, &slug("acme"), NOW).is_ok());
        let late = exp * 1000 + LEEWAY_SECONDS * 1000 + 1;
        assert_eq!(long.verify(&stranger, &token, &slug("acme"), late), Err(AuthError::Expired));
        assert_eq!(long.verify(&ring(), &token, &slug("acme"), late), Err(AuthError::Expired));
    }

    #[test]
    fn a_fresh_token_verifies_for_its_tenant() {
        let (token, exp) = ring().issue(&claims("acme"), NOW);
        assert_eq!(exp, NOW / 1000 + TOKEN_TTL_SECONDS);
        assert_eq!(ring().verify(&token, &slug("acme"), NOW + 1000), Ok(claims("acme")));
    }

    #[test]
    fn another_tenants_token_is_403_and_editing_its_tenant_breaks_the_signature() {
        let (token, _) = ring().issue(&claims("globex"), NOW);
        assert_eq!(ring().verify(&token, &slug("acme"), NOW), Err(AuthError::WrongTenant));
        let edited = tamper(&token, |p| p["tenant"] = "acme".into());
        assert_eq!(ring().verify(&edited, &slug("acme"), NOW), Err(AuthError::Signature));
        let promoted = tamper(&ring().issue(&TenantClaims { role: Role::Member, ..claims("acme") }, NOW).0, |p| {
            p["role"] = "admin".into()
        });
        assert_eq!(ring().verify(&promoted, &slug("acme"), NOW), Err(AuthError::Signature));
    }

    #[test]
    fn expiry_is_enforced_with_a_small_leeway() {
        let (token, _) = ring().issue(&claims("acme"), NOW);
        let ttl_ms = TOKEN_TTL_SECONDS * 1000;
        assert!(ring().verify(&token, &slug("acme"), NOW + ttl_ms + 29_000).is_ok());
        assert_eq!(ring().verify(&token, &slug("acme"), NOW + ttl_ms + 31_000), Err(AuthError::Expired));
        let no_exp = tamper(&token, |p| {
            p.as_object_mut().unwrap().remove("exp");
        });
        assert!(ring().verify(&no_exp, &slug("acme"), NOW).is_err());
    }

    /// A token signed like `issue` does, with `claims` and `header` as given (for the checks
    /// `issue` itself never trips).
    fn signed(header: serde_json::Value, claims: serde_json::Value) -> String {
        use hmac::Mac;
        let tenant = claims["tenant"].as_str().unwrap().to_owned();
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let key = ring().current.tenant_key(&tenant);
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_ref()).unwrap();
        mac.update(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    fn header() -> serde_json::Value {
        serde_json::json!({ "alg": "HS256", "kid": "k2", "typ": "JWT" })
    }

    /// The claims of a fresh token for `acme` at `NOW`, `iat` and `exp` in seconds.
    fn payload(iat: i64, exp: i64) -> serde_json::Value {
        serde_json::json!({ "tenant": "acme", "db": "db-of-acme", "sub": 7, "role": "admin", "iat": iat, "exp": exp })
    }

    #[test]
    fn the_test_signer_signs_like_issue() {
        let now = NOW / 1000;
        let token = signed(header(), payload(now, now + 60));
        assert_eq!(ring().verify(&token, &slug("acme"), NOW), Ok(claims("acme")));
    }

    #[test]
    fn a_token_not_valid_yet_is_refused_beyond_the_leeway() {
        let now = NOW / 1000;
        let with_nbf = |nbf: i64| {
            let mut p = payload(now, now + 60);
            p["nbf"] = nbf.into();
            signed(header(), p)
        };
        assert_eq!(ring().verify(&with_nbf(now - 10), &slug("acme"), NOW), Ok(claims("acme")));
        assert_eq!(ring().verify(&with_nbf(now + LEEWAY_SECONDS - 1), &slug("acme"), NOW), Ok(claims("acme")));
        assert_eq!(ring().verify(&with_nbf(now + LEEWAY_SECONDS + 5), &slug("acme"), NOW), Err(AuthError::NotYetValid));
        // Nor is one issued in the future.
        let future = signed(header(), payload(now + 120, now + 180));
        assert_eq!(ring().verify(&future, &slug("acme"), NOW), Err(AuthError::NotYetValid));
    }

    #[test]
    fn a_critical_header_extension_is_refused() {
        let now = NOW / 1000;
        for crit in
            [serde_json::json!(["exp"]), serde_json::json!(["x-ext"]), serde_json::json!([]), serde_json::Value::Null]
        {
            let mut h = header();
            h["crit"] = crit.clone();
            h["x-ext"] = true.into();
            let token = signed(h, payload(now, now + 60));
            assert_eq!(ring().verify(&token, &slug("acme"), NOW), Err(AuthError::CriticalExtension), "{crit}");
        }
        // Other header fields are not critical: ignored.
        let mut h = header();
        h["x-ext"] = true.into();
        assert_eq!(ring().verify(&signed(h, payload(now, now + 60)), &slug("acme"), NOW), Ok(claims("acme")));
    }

    #[test]
    fn a_token_living_longer_than_issued_ones_or_without_iat_is_refused() {
        let now = NOW / 1000;
        let longest = signed(header(), payload(now, now + TOKEN_TTL_SECONDS + LEEWAY_SECONDS));
        assert_eq!(ring().verify(&longest, &slug("acme"), NOW), Ok(claims("acme")));
        let day = signed(header(), payload(now, now + 86_400));
        assert_eq!(ring().verify(&day, &slug("acme"), NOW), Err(AuthError::Lifetime));
        let mut no_iat = payload(now, now + 60);
        no_iat.as_object_mut().unwrap().remove("iat");
        assert_eq!(ring().verify(&signed(header(), no_iat), &slug("acme"), NOW), Err(AuthError::Lifetime));
    }

    #[test]
    fn none_and_other_algorithms_are_refused() {
        let payload = serde_json::json!({ "tenant": "acme", "sub": 1, "role": "admin", "exp": NOW / 1000 + 60 });
        for alg in ["none", "None", "HS512", "RS256", "EdDSA"] {
            let token = unsigned(serde_json::json!({ "alg": alg, "kid": "k2" }), payload.clone());
            assert_eq!(ring().verify(&token, &slug("acme"), NOW), Err(AuthError::Algorithm), "{alg}");
        }
    }

    #[test]
    fn rotation_keeps_previous_tokens_until_the_previous_key_is_dropped() {
        let old_ring = KeyRing { current: ring().previous.unwrap(), previous: None };
        let (old_token, _) = old_ring.issue(&claims("acme"), NOW);
        assert!(ring().verify(&old_token, &slug("acme"), NOW).is_ok(), "previous key still accepted");
        let rotated = KeyRing { current: ring().current, previous: None };
        assert_eq!(rotated.verify(&old_token, &slug("acme"), NOW), Err(AuthError::UnknownKey));
        let (new_token, _) = ring().issue(&claims("acme"), NOW);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(new_token.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!((header["kid"].as_str(), header["alg"].as_str()), (Some("k2"), Some("HS256")));
        assert!(rotated.verify(&new_token, &slug("acme"), NOW).is_ok());
    }

    #[test]
    fn garbage_is_malformed_or_unknown() {
        for junk in ["", "abc", "a.b", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30.sig"] {
            assert!(ring().verify(junk, &slug("acme"), NOW).is_err(), "{junk}");
        }
        let (token, _) = ring().issue(&claims("acme"), NOW);
        let bad_tenant = tamper(&token, |p| p["tenant"] = "NOT A SLUG".into());
        assert_eq!(ring().verify(&bad_tenant, &slug("acme"), NOW), Err(AuthError::Malformed));
    }

    #[test]
    fn bearer_headers_and_key_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer abc")), Ok("abc"));
        assert_eq!(bearer(None), Err(AuthError::Missing));
        for bad in ["Basic abc", "Bearer", "Bearer ", "abc"] {
            assert_eq!(bearer(Some(bad)), Err(AuthError::Malformed), "{bad}");
        }
        assert!(MasterKey::parse("k1:short").is_err());
        assert!(MasterKey::parse("nocolon").is_err());
        assert!(MasterKey::parse("bad kid:0123456789abcdef0123456789abcdef").is_err());
        assert!(!format!("{:?}", ring()).contains("0123456789abcdef"));
        assert_eq!(AuthError::WrongTenant.status(), 403);
        assert_eq!(AuthError::Expired.status(), 401);
    }
}
