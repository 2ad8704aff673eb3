//! Logging in (`POST /api/auth/login`) and checking the bearer token on every other route.
//!
//! Signing keys come from the secrets `JWT_SIGNING_KEY` (`kid:secret`, the current key) and, during
//! a rotation, `JWT_SIGNING_KEY_PREVIOUS`; see `core::token` for the per-tenant derivation.
//! Logins are throttled per tenant and email in the tenant's own database: each attempt reserves
//! its place in the current [`WINDOW_MS`] window (one atomic upsert) before the password is
//! checked, and an attempt beyond the first [`MAX_FAILURES`] gets 429 until the window ends. So
//! however many guesses arrive at once, at most [`MAX_FAILURES`] of them fail a password check
//! per window. A successful sign-in gives back its own reservation (it is not a failure). Unknown
//! emails take the same path: a reservation, and a check against a decoy hash.
//!
//! The token's user is read from the tenant database, then trusted by this isolate for
//! `context::users::TTL_MS` (the same window as the tenant lookup), so a hot request reads no user row: a
//! deleted user or a role change takes effect within that window everywhere, and at once in the
//! isolate that made the change. The cache is keyed by the tenant's database id and the user id, so
//! an entry can only ever answer for that exact database.

use std::cell::RefCell;

use serde::Deserialize;
use serde_json::json;
use wasm_bindgen::JsValue;
use worker::{Env, Request, Response};

use super::context::{audit_statement, users, AuthUser, TenantContext};
use super::TenantDb;
use crate::core::token::{bearer, AuthError, KeyRing, Role, TenantClaims, TokenCache};
use crate::http::{self, ApiError};
use crate::store::control::TenantRecord;
use crate::store::directory as registry;

pub const MAX_FAILURES: i64 = 10;
pub const WINDOW_MS: i64 = 15 * 60 * 1000;
/// Checked when the email is unknown, so a miss costs the same time as a wrong password.
const DECOY_HASH: &str = "$pbkdf2-sha256$i=100000$dGVuYW50cnktZGVjb3k$yG3Qw1i8n6m2W7Xq7m3i8Q0f2uJ3m0t6s1Yc2A5Ld9Q";

/// How long this isolate trusts a token it verified (never past the token's expiry).
const TOKEN_CACHE_TTL_MS: f64 = 60_000.0;

thread_local! {
    static TOKENS: RefCell<TokenCache> = RefCell::new(TokenCache::new(registry::CAPACITY, TOKEN_CACHE_TTL_MS));
}

fn now_ms() -> i64 {
    js_sys::Date::now() as i64
}

/// The key ring from the configuration root; without one, sign-in answers 503.
fn key_ring(env: &Env) -> Result<KeyRing, ApiError> {
    crate::edge::config(env)?.signing_keys.clone().map_err(|what| {
        ApiError::Unavailable {
            code: "auth_not_configured",
            message: "sign-in is not configured on this deployment".into(),
            retry_after: 60,
        }
        .inspect_log(&what)
    })
}

fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::WrongTenant => ApiError::Forbidden { code: "wrong_tenant", message: e.to_string() },
        other => ApiError::Unauthorized { message: other.to_string() },
    }
}

/// Checks the bearer token against the routed tenant and loads the user it names.
pub async fn authenticate(
    req: &Request,
    env: &Env,
    tenant: TenantDb,
    record: TenantRecord,
    request_id: &str,
    url: worker::Url,
) -> Result<TenantContext, ApiError> {
    let header = req.headers().get("Authorization").ok().flatten();
    let token = bearer(header.as_deref()).map_err(auth_error)?;
    let ring = key_ring(env)?;
    let claims = TOKENS.with(|c| c.borrow_mut().verify(&ring, token, tenant.slug(), now_ms())).map_err(auth_error)?;
    if record.database_id.as_deref() != Some(claims.db.as_str()) {
        return Err(ApiError::Unauthorized {
            message: "the token was issued for an earlier tenant of this name; sign in again".into(),
        });
    }
    // The database decides who the user is (not the token): a deleted user's token stops working,
    // a demoted admin loses admin rights, within `users::TTL_MS`. The token's `db` is the tenant's
    // database (checked above), so it keys the cache.
    let key = (claims.db, claims.sub);
    let now = now_ms() as f64;
    let cached = users::get(&key, now);
    let user = match cached {
        Some(user) => user,
        None => {
            let user: Option<AuthUser> = tenant
                .db()
                .prepare("SELECT id, email, role FROM users WHERE id = ?1")
                .bind(&[JsValue::from(key.1 as f64)])?
                .first(None)
                .await?;
            let user =
                user.ok_or_else(|| ApiError::Unauthorized { message: "the token's user no longer exists".into() })?;
            users::insert(key, user.clone(), now);
            user
        }
    };
    let platform = super::context::Platform::new(env.clone());
    Ok(TenantContext::new(tenant, record, user, request_id, url, platform))
}

#[derive(Deserialize)]
struct LoginUser {
    id: i64,
    email: String,
    role: String,
    password_hash: String,
}

#[derive(Deserialize)]
struct Attempts {
    window_start: i64,
    failures: i64,
}

/// `{email, password}`, and nothing else.
fn parse_login(body: &serde_json::Map<String, serde_json::Value>) -> Result<(String, String), ApiError> {
    let mut fields = std::collections::BTreeMap::new();
    let (mut email, mut password) = (None, None);
    for (key, value) in body {
        match (key.as_str(), value) {
            ("email", serde_json::Value::String(e)) if !e.trim().is_empty() && e.len() <= 254 => {
                email = Some(e.trim().to_owned())
            }
            ("password", serde_json::Value::String(p)) if !p.is_empty() && p.len() <= 256 => password = Some(p.clone()),
            // A bad value is reported as missing, below.
            ("email" | "password", _) => {}
            _ => drop(fields.insert(key.clone(), "is not a known field".to_owned())),
        }
    }
    if email.is_none() {
        fields.insert("email".to_owned(), "is required: a string".to_owned());
    }
    if password.is_none() {
        fields.insert("password".to_owned(), "is required: a string of at most 256 bytes".to_owned());
    }
    match (email, password) {
        (Some(email), Some(password)) if fields.is_empty() => Ok((email, password)),
        _ => Err(ApiError::invalid_fields(fields)),
    }
}

pub async fn login(
    req: &Request,
    env: &Env,
    tenant: &TenantDb,
    record: &TenantRecord,
    request_id: &str,
) -> Result<Response, ApiError> {
    let (email, password) = parse_login(&http::read_json(req).await?)?;
    super::limit(env, crate::core::plans::RateLimit::LoginEmail, tenant.slug(), &email).await?;
    let ring = key_ring(env)?;
    let db = tenant.db();
    let now = now_ms();

    // Reserve this attempt before the password check, in one statement: a new window when the
    // old one is over, else one more attempt in it. A burst of concurrent guesses gets numbers
    // 1, 2, 3...; only the first MAX_FAILURES are checked. Known and unknown emails alike.
    let reserved: Attempts = db
        .prepare(
            "INSERT INTO login_attempts (email, window_start, failures) VALUES (?1, ?2, 1) \
             ON CONFLICT (email) DO UPDATE SET \
             failures = CASE WHEN window_start + ?3 <= ?2 THEN 1 ELSE failures + 1 END, \
             window_start = CASE WHEN window_start + ?3 <= ?2 THEN ?2 ELSE window_start END \
             RETURNING window_start, failures",
        )
        .bind(&[JsValue::from_str(&email), JsValue::from(now as f64), JsValue::from(WINDOW_MS as f64)])?
        .first(None)
        .await?
        .ok_or_else(|| ApiError::internal("the login attempt upsert returned no row"))?;
    if reserved.failures > MAX_FAILURES {
        let remaining = reserved.window_start + WINDOW_MS - now;
        return Err(ApiError::TooManyRequests {
            code: "too_many_attempts",
            message: "too many failed sign-ins for this email; try again later".into(),
            // Whole seconds, rounded up: never past the window's end (at most 900 for 15 min).
            retry_after: ((remaining.max(1) + 999) / 1000) as u32,
        });
    }

    let user: Option<LoginUser> = db
        .prepare("SELECT id, email, role, password_hash FROM users WHERE email = ?1")
        .bind(&[JsValue::from_str(&email)])?
        .first(None)
        .await?;
    let ok = match &user {
        Some(u) => crate::crypto::verify_password(&password, &u.password_hash).await?,
        None => {
            crate::crypto::verify_password(&password, DECOY_HASH).await?;
            false
        }
    };
    let Some(user) = user.filter(|_| ok) else {
        // The reservation stays: it was a failure.
        audit_statement(db, None, "login.failed", &format!("email:{email}"), request_id, &json!({}))?.run().await?;
        return Err(ApiError::Unauthorized { message: "the email or password is wrong".into() });
    };

    let role = Role::parse(&user.role).unwrap_or(Role::Member);
    let database =
        record.database_id.clone().ok_or_else(|| ApiError::internal("an active tenant without a database"))?;
    let claims = TenantClaims { tenant: tenant.slug().to_string(), db: database, sub: user.id, role };
    let (token, expires_at) = ring.issue(&claims, now);
    let actor = AuthUser { id: user.id, email: user.email.clone(), role: user.role.clone() };
    // A success gives back this attempt's reservation only (in its window), never the others':
    // wiping the counter would let a burst that holds the right password check more guesses.
    let refund = db
        .prepare("UPDATE login_attempts SET failures = MAX(failures - 1, 0) WHERE email = ?1 AND window_start = ?2")
        .bind(&[JsValue::from_str(&email), JsValue::from(reserved.window_start as f64)])?;
    db.batch(vec![
        refund,
        audit_statement(db, Some(&actor), "login", &format!("user:{}", user.id), request_id, &json!({}))?,
    ])
    .await?;
    http::json(
        200,
        &json!({
            "token": token, "token_type": "Bearer", "expires_at": expires_at,
            "user": { "id": user.id, "email": user.email, "role": user.role },
        }),
    )
}
