//! Per-request metering and rate limits at the edge: the JavaScript meter every tenant database
//! goes through (`meter.mjs`), this isolate's [`UsageBuffer`], its background flush to the control
//! plane, and the Rate Limiting bindings. Nothing here writes to D1 on a request's own path.

use std::cell::RefCell;

use wasm_bindgen::prelude::*;
use worker::{D1Database, Env};

use crate::core::plans::RateLimit;
use crate::core::usage::{Counters, Flush, UsageBuffer, FLUSH_AFTER_MS};
use crate::store::control::ControlStore;
use crate::store::sql::Sql;

#[wasm_bindgen(module = "/src/edge/meter.mjs")]
extern "C" {
    #[wasm_bindgen(js_name = newMeter)]
    fn new_meter() -> JsValue;
    fn metered(db: &JsValue, meter: &JsValue) -> JsValue;
    #[wasm_bindgen(js_name = rowsRead)]
    fn rows_read(meter: &JsValue) -> f64;
    #[wasm_bindgen(js_name = rowsWritten)]
    fn rows_written(meter: &JsValue) -> f64;
    #[wasm_bindgen(js_name = sizeAfter)]
    fn size_after(meter: &JsValue) -> f64;
    #[wasm_bindgen(js_name = gateOn)]
    fn gate_on(meter: &JsValue, env: &JsValue, name: &str, key: &str) -> bool;
    #[wasm_bindgen(js_name = gateOf)]
    fn gate_of(meter: &JsValue) -> JsValue;
    #[wasm_bindgen(js_name = gateSettled)]
    fn gate_settled(meter: &JsValue) -> bool;
    #[wasm_bindgen(js_name = gateLimited)]
    fn gate_limited(meter: &JsValue) -> bool;
    #[wasm_bindgen(js_name = gateError)]
    fn gate_error(meter: &JsValue) -> Option<String>;
}

/// What one request's statements read and wrote, added up by `meter.mjs`; and the request's
/// rate-limit gate (see [`Meter::gate`]).
pub struct Meter {
    js: JsValue,
    gated: std::cell::Cell<Option<RateLimit>>,
}

impl Default for Meter {
    fn default() -> Self {
        Self { js: new_meter(), gated: std::cell::Cell::new(None) }
    }
}

impl Meter {
    /// Asks rate limit `limit` for one more request for `key` without waiting: every statement
    /// through this meter waits for the answer before it reaches D1 (a refused request never
    /// touches the database), and [`Meter::refused`] tells the caller, once the request is
    /// handled, whether to answer 429 instead. A missing binding lets requests through, logged.
    pub fn gate(&self, env: &Env, limit: RateLimit, key: &str) {
        if gate_on(&self.js, env.as_ref(), limit.binding(), key) {
            self.gated.set(Some(limit));
        } else {
            missing(limit);
        }
    }

    /// Whether a statement was held back because the gate refused (known without waiting).
    pub fn held_back(&self) -> bool {
        self.gated.get().is_some() && gate_limited(&self.js)
    }

    /// The gate's limit if it refused this request (waiting for its answer when no statement
    /// did). A binding that failed lets the request through, logged.
    pub async fn refused(&self) -> Option<RateLimit> {
        let limit = self.gated.get()?;
        if !gate_settled(&self.js) {
            let _ = wasm_bindgen_futures::JsFuture::from(gate_of(&self.js).unchecked_into::<js_sys::Promise>()).await;
        }
        if let Some(e) = gate_error(&self.js) {
            crate::log::warn(&format!("rate limit {} failed, letting the request through: {e}", limit.binding()));
            return None;
        }
        gate_limited(&self.js).then_some(limit)
    }

    /// `db`, its results counted on this meter.
    pub fn wrap(&self, db: D1Database) -> D1Database {
        let js: JsValue = db.into();
        D1Database::from(metered(&js, &self.js).unchecked_into::<worker::worker_sys::D1Database>())
    }

    /// The request's counts: one request, its rows, and the database's size if a result said.
    pub fn counters(&self) -> Counters {
        let count = |n: f64| if n > 0.0 { n as u64 } else { 0 };
        let size = size_after(&self.js);
        Counters {
            requests: 1,
            limited: 0,
            rows_read: count(rows_read(&self.js)),
            rows_written: count(rows_written(&self.js)),
            size_bytes: (size >= 0.0).then_some(size as u64),
        }
    }
}

thread_local! {
    static BUFFER: RefCell<UsageBuffer> = RefCell::new(UsageBuffer::new());
}

/// Adds one request's counts for `slug`, and says which flush the caller must hand to
/// `ctx.wait_until` ([`flush`], with [`Flush::Later`]'s delay or none).
pub fn record(slug: &str, counters: &Counters, now: f64) -> Flush {
    BUFFER.with(|b| b.borrow_mut().record(slug, now, counters))
}

/// Requests for `slug` this month that this isolate has not flushed yet.
pub fn pending_requests(slug: &str, month: &str) -> u64 {
    BUFFER.with(|b| b.borrow().pending_requests(slug, month))
}

/// After `when` asks for it ([`Flush::Later`]: [`FLUSH_AFTER_MS`]), writes everything this
/// isolate has counted to the control plane in one batch. Counts that came in meanwhile, or that a
/// failed flush put back, are flushed once more in the same `waitUntil` (which lasts 30 s at most);
/// after that the next request schedules a flush.
pub async fn flush<S: Sql>(control: ControlStore<S>, when: Flush) {
    let mut delay = if when == Flush::Later { FLUSH_AFTER_MS } else { 0.0 };
    for _ in 0..2 {
        if delay > 0.0 {
            worker::Delay::from(std::time::Duration::from_millis(delay as u64)).await;
        }
        let taken = BUFFER.with(|b| b.borrow_mut().take(js_sys::Date::now()));
        if taken.is_empty() {
            return;
        }
        let outcome = control.record_usage(&taken).await;
        if let Err(e) = &outcome {
            crate::log::warn(&format!("usage flush of {} tenant-days failed (kept for the next): {e}", taken.len()));
        }
        if !BUFFER.with(|b| b.borrow_mut().flushed(taken, outcome.is_ok(), js_sys::Date::now())) {
            return;
        }
        delay = FLUSH_AFTER_MS;
    }
    // Scheduled by `flushed` but not run here: let the next count schedule it.
    BUFFER.with(|b| b.borrow_mut().unschedule());
}

/// Does rate limit `limit` let one more request through for `key`? A deployment without the
/// binding (or a binding that fails) lets it through, logged: rate limits protect availability,
/// so they fail open.
pub async fn allow(env: &Env, limit: RateLimit, key: &str) -> bool {
    let meter = Meter::default();
    meter.gate(env, limit, key);
    meter.refused().await.is_none()
}

/// Logs a missing rate-limit binding once per isolate.
fn missing(limit: RateLimit) {
    thread_local! {
        static SAID: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
    }
    let first = SAID.with(|s| {
        let mut said = s.borrow_mut();
        let new = !said.contains(&limit.binding());
        if new {
            said.push(limit.binding());
        }
        new
    });
    if first {
        crate::log::warn(&format!(
            "rate limit binding {} is missing: requests are not limited by it (see wrangler.toml [[ratelimits]])",
            limit.binding()
        ));
    }
}
