//! WebCrypto at the edge: random bytes, PBKDF2 and SHA-256 for the formats in
//! [`crate::core::password`]. Native code in the runtime, so hashing fits a Worker's CPU limits.

use sha2::{Digest, Sha256};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::core::password::{PasswordHash, HASH_LEN, ITERATIONS, SALT_LEN};

fn js(e: JsValue) -> worker::Error {
    worker::Error::JsError(format!("{e:?}"))
}

fn crypto() -> worker::Result<web_sys::Crypto> {
    js_sys::global().unchecked_into::<web_sys::WorkerGlobalScope>().crypto().map_err(js)
}

/// `n` bytes from the runtime's CSPRNG.
pub fn random_bytes(n: usize) -> worker::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    crypto()?.get_random_values_with_u8_array(&mut buf).map_err(js)?;
    Ok(buf)
}

/// A random identifier: 16 random bytes, hex.
pub fn random_id() -> worker::Result<String> {
    Ok(hex(&random_bytes(16)?))
}

/// A request's id (`X-Request-Id`, audit rows): 32 hex digits, the first 16 drawn at random once
/// per isolate, the last 16 this isolate's count of requests, so ids never repeat, without a call
/// to WebCrypto on every request (it cost 10 µs of each). Not a secret: never use it as one.
pub fn request_id() -> String {
    thread_local! {
        static PREFIX: std::cell::OnceCell<String> = const { std::cell::OnceCell::new() };
        static COUNT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let n = COUNT.with(|c| {
        c.set(c.get().wrapping_add(1));
        c.get()
    });
    PREFIX.with(|p| {
        let prefix = p.get_or_init(|| match random_bytes(8) {
            Ok(bytes) => hex(&bytes),
            // Without WebCrypto (never in a Worker): the isolate's start time keeps ids apart.
            Err(_) => format!("{:016x}", js_sys::Date::now() as u64),
        });
        format!("{prefix}{n:016x}")
    })
}

pub use crate::core::digest::hex;

/// PBKDF2-HMAC-SHA256 through WebCrypto.
pub async fn pbkdf2_sha256(password: &str, salt: &[u8], iterations: u32) -> worker::Result<Vec<u8>> {
    let subtle = crypto()?.subtle();
    let usages = js_sys::Array::of1(&JsValue::from_str("deriveBits"));
    let raw = js_sys::Uint8Array::from(password.as_bytes());
    let key = JsFuture::from(subtle.import_key_with_str("raw", &raw, "PBKDF2", false, &usages).map_err(js)?)
        .await
        .map_err(js)?;
    let salt = js_sys::Uint8Array::from(salt);
    let params = web_sys::Pbkdf2Params::new("PBKDF2", &JsValue::from_str("SHA-256"), iterations, &salt);
    let bits = JsFuture::from(
        subtle.derive_bits_with_object(&params, &key.unchecked_into(), (HASH_LEN * 8) as u32).map_err(js)?,
    )
    .await
    .map_err(js)?;
    Ok(js_sys::Uint8Array::new(&bits).to_vec())
}

/// Hashes a new password with a fresh salt.
pub async fn hash_password(password: &str) -> worker::Result<String> {
    let salt = random_bytes(SALT_LEN)?;
    let hash = pbkdf2_sha256(password, &salt, ITERATIONS).await?;
    Ok(PasswordHash { iterations: ITERATIONS, salt, hash }.encode())
}

/// Checks `password` against a stored hash; a malformed stored hash never matches.
pub async fn verify_password(password: &str, stored: &str) -> worker::Result<bool> {
    let Some(parsed) = PasswordHash::parse(stored) else { return Ok(false) };
    let derived = pbkdf2_sha256(password, &parsed.salt, parsed.iterations).await?;
    Ok(parsed.matches(&derived))
}

/// Compares two secrets in constant time (through their SHA-256, so lengths leak nothing).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    Sha256::digest(a.as_bytes()).ct_eq(&Sha256::digest(b.as_bytes())).into()
}
