//! Self-healing of tenant bindings. A deploy that sends only wrangler.toml's bindings (a bare
//! `wrangler deploy`) drops every tenant binding; the cron reconciler would restore them within
//! one cron period. Instead, the first request that finds its tenant's binding missing says so
//! here ([`wanted`]), and the router, which sits above both the tenant API and the control plane,
//! starts a bindings reconcile in the background (`ctx.wait_until`) when [`due`] says so: tenants
//! are back within seconds of their first request.
//!
//! Bounded: at most one reconcile per isolate every [`MIN_INTERVAL_MS`], and the reconcile itself
//! holds the control plane's `bindings` lease, so a burst across many isolates patches the
//! settings once.

use std::cell::Cell;

/// The shortest time between two reconciles started by one isolate.
pub const MIN_INTERVAL_MS: f64 = 10_000.0;

thread_local! {
    /// Whether a request of this invocation found a binding missing.
    static WANTED: Cell<bool> = const { Cell::new(false) };
    /// The binding hosts found missing a binding since the last heal started.
    static HOSTS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    /// When this isolate last started a reconcile.
    static LAST_STARTED: Cell<f64> = const { Cell::new(f64::NEG_INFINITY) };
}

/// Records that a binding was found missing: on the main Worker, or on `host`.
pub fn wanted(host: Option<&str>) {
    WANTED.with(|w| w.set(true));
    if let Some(host) = host {
        HOSTS.with(|h| {
            let mut hosts = h.borrow_mut();
            if !hosts.iter().any(|x| x == host) && hosts.len() < 64 {
                hosts.push(host.to_owned());
            }
        });
    }
}

/// The hosts to heal (taken: the next heal starts from none).
pub fn take_hosts() -> Vec<String> {
    HOSTS.with(|h| std::mem::take(&mut *h.borrow_mut()))
}

/// Whether to start a reconcile now (clears the request); at most once per `MIN_INTERVAL_MS`.
pub fn due(now_ms: f64) -> bool {
    if !WANTED.with(|w| w.replace(false)) {
        return false;
    }
    LAST_STARTED.with(|last| {
        if now_ms - last.get() < MIN_INTERVAL_MS {
            return false;
        }
        last.set(now_ms);
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_only_when_wanted_and_at_most_once_per_interval() {
        assert!(!due(0.0), "nothing wanted");
        wanted(None);
        assert!(due(0.0));
        assert!(!due(1.0), "the request was consumed");
        wanted(None);
        assert!(!due(MIN_INTERVAL_MS - 1.0), "too soon after the last one");
        wanted(None);
        assert!(due(MIN_INTERVAL_MS + 1.0));
    }

    #[test]
    fn hosts_found_missing_a_binding_are_taken_once_each() {
        take_hosts();
        wanted(Some("tenantry-host-0002"));
        wanted(Some("tenantry-host-0001"));
        wanted(Some("tenantry-host-0002"));
        wanted(None);
        assert_eq!(take_hosts(), vec!["tenantry-host-0002", "tenantry-host-0001"]);
        assert!(take_hosts().is_empty(), "taken: the next heal starts from none");
    }
}
