//! A tenant database reached through its binding host: the main Worker's dispatch-namespace
//! binding (`HOSTS_DISPATCHER`) gives the host's fetcher, and `host/client.mjs` wraps it in an object
//! with the D1Database API (each call one `POST /sql` to the host; the protocol is
//! `store::host`'s). workers-rs takes it as a `D1Database`, so tenant code is the same whether the
//! tenant's binding is on this Worker or on a host.

use wasm_bindgen::prelude::*;
use worker::{D1Database, Env};

/// The main Worker's dispatch-namespace binding to the hosts.
pub const HOSTS_BINDING: &str = "HOSTS_DISPATCHER";

#[wasm_bindgen(module = "/host/client.mjs")]
extern "C" {
    #[wasm_bindgen(js_name = hostDatabase)]
    fn host_database(fetcher: &JsValue, host: &str, binding: &str) -> JsValue;
}

/// Tenant binding `binding` on host `name`, when this Worker has the dispatch-namespace binding.
pub fn host_database_of(env: &Env, name: &str, binding: &str) -> Option<D1Database> {
    let dispatcher = js_sys::Reflect::get(env, &JsValue::from_str(HOSTS_BINDING)).ok()?;
    if dispatcher.is_undefined() || dispatcher.is_null() {
        return None;
    }
    let dispatcher: worker::worker_sys::DynamicDispatcher = dispatcher.unchecked_into();
    let fetcher = dispatcher.get(name.to_owned(), JsValue::undefined()).ok()?;
    let db = host_database(&fetcher.into(), name, binding);
    Some(D1Database::from(db.unchecked_into::<worker::worker_sys::D1Database>()))
}
