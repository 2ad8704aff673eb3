//! Logging that works in the Worker (the console, which `wrangler tail` shows) and in native
//! tests and the simulation (where it is silent: their assertions and reports say what matters).

pub fn info(message: &str) {
    #[cfg(target_arch = "wasm32")]
    worker::console_log!("{message}");
    #[cfg(not(target_arch = "wasm32"))]
    let _ = message;
}

pub fn warn(message: &str) {
    #[cfg(target_arch = "wasm32")]
    worker::console_warn!("{message}");
    #[cfg(not(target_arch = "wasm32"))]
    let _ = message;
}

pub fn error(message: &str) {
    #[cfg(target_arch = "wasm32")]
    worker::console_error!("{message}");
    #[cfg(not(target_arch = "wasm32"))]
    let _ = message;
}
