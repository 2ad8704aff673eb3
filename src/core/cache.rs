//! A small time-bounded, size-bounded map for isolate-local caches (the tenant lookup).
//!
//! Time is passed in (milliseconds), so expiry is tested without a clock. When full, an insert
//! first drops expired entries, then the entry closest to expiry (the oldest insert, since every
//! entry lives the same TTL). The key type is the whole key: a cache keyed by `TenantSlug` can only
//! ever answer for that exact tenant.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// The value in `cell`, computed by `init` the first time it succeeds. For what an isolate reads
/// once from its environment (vars and secrets change only with a new Worker version, which
/// starts new isolates); a failure is not kept, so the next call tries again.
pub fn once_per_isolate<T: Clone + 'static, E>(
    cell: &'static std::thread::LocalKey<std::cell::OnceCell<T>>,
    init: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    if let Some(value) = cell.with(|c| c.get().cloned()) {
        return Ok(value);
    }
    let value = init()?;
    cell.with(|c| {
        let _ = c.set(value.clone());
    });
    Ok(value)
}

#[derive(Debug)]
pub struct TtlCache<K, V> {
    entries: HashMap<K, (V, f64)>,
    capacity: usize,
    ttl_ms: f64,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(capacity: usize, ttl_ms: f64) -> Self {
        assert!(capacity > 0, "a cache needs room for one entry");
        Self { entries: HashMap::new(), capacity, ttl_ms }
    }

    /// The value for `key` if it was inserted less than the TTL before `now`.
    pub fn get<Q>(&mut self, key: &Q, now: f64) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get_aged(key, now).map(|(value, _)| value)
    }

    /// Like [`TtlCache::get`], with the entry's age (ms since it was inserted).
    pub fn get_aged<Q>(&mut self, key: &Q, now: f64) -> Option<(V, f64)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.entries.get(key) {
            Some((value, expires)) if *expires > now => Some((value.clone(), self.ttl_ms - (expires - now))),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&mut self, key: K, value: V, now: f64) {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            self.entries.retain(|_, (_, expires)| *expires > now);
            if self.entries.len() >= self.capacity {
                let oldest = self
                    .entries
                    .iter()
                    .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1))
                    .map(|(k, _)| k.clone())
                    .expect("a full cache has entries");
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (value, now + self.ttl_ms));
    }

    pub fn remove<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.remove(key);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_isolate_keeps_the_first_success_only() {
        thread_local! {
            static CELL: std::cell::OnceCell<u32> = const { std::cell::OnceCell::new() };
        }
        assert_eq!(once_per_isolate(&CELL, || Err::<u32, &str>("not yet")), Err("not yet"));
        assert_eq!(once_per_isolate(&CELL, || Ok::<u32, &str>(7)), Ok(7));
        assert_eq!(once_per_isolate(&CELL, || Ok::<u32, &str>(8)), Ok(7));
    }

    #[test]
    fn an_entry_knows_its_age() {
        let mut cache = TtlCache::new(4, 1000.0);
        cache.insert("a", 1, 100.0);
        assert_eq!(cache.get_aged(&"a", 100.0), Some((1, 0.0)));
        assert_eq!(cache.get_aged(&"a", 850.0), Some((1, 750.0)));
        assert_eq!(cache.get_aged(&"a", 1100.0), None);
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let mut c = TtlCache::new(4, 1000.0);
        c.insert("a", 1, 0.0);
        assert_eq!(c.get(&"a", 999.0), Some(1));
        assert_eq!(c.get(&"a", 1000.0), None);
        assert!(c.is_empty(), "an expired entry is dropped when seen");
        c.insert("a", 2, 1000.0);
        assert_eq!(c.get(&"a", 1500.0), Some(2));
    }

    #[test]
    fn reinserting_refreshes_the_value_and_the_ttl() {
        let mut c = TtlCache::new(4, 1000.0);
        c.insert("a", 1, 0.0);
        c.insert("a", 2, 800.0);
        assert_eq!(c.get(&"a", 1500.0), Some(2));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_full_cache_drops_expired_entries_then_the_oldest() {
        let mut c = TtlCache::new(3, 1000.0);
        c.insert("a", 1, 0.0);
        c.insert("b", 2, 100.0);
        c.insert("c", 3, 200.0);
        c.insert("d", 4, 300.0); // full, nothing expired: "a" (oldest) goes
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&"a", 300.0), None);
        assert_eq!(c.get(&"b", 300.0), Some(2));
        c.insert("e", 5, 1150.0); // "b" expired at 1100: it goes, "c" and "d" stay
        assert_eq!((c.get(&"c", 1150.0), c.get(&"d", 1150.0), c.get(&"e", 1150.0)), (Some(3), Some(4), Some(5)));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn keys_never_mix() {
        let mut c = TtlCache::new(8, 1000.0);
        c.insert("acme".to_owned(), "acme-db", 0.0);
        c.insert("acme2".to_owned(), "acme2-db", 0.0);
        assert_eq!(c.get(&"acme".to_owned(), 1.0), Some("acme-db"));
        assert_eq!(c.get(&"acm".to_owned(), 1.0), None);
        c.remove(&"acme".to_owned());
        assert_eq!(c.get(&"acme".to_owned(), 1.0), None);
        assert_eq!(c.get(&"acme2".to_owned(), 1.0), Some("acme2-db"));
    }
}
