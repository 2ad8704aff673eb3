//! When to retry a call to the Cloudflare API, and how long to wait first.
//!
//! Retried: 429 (waiting at least what `Retry-After` says), 5xx, network errors and timeouts.
//! Never retried: other 4xx (the request itself is wrong). Waits grow exponentially with full
//! jitter (AWS's "full jitter": a uniform draw in `[0, min(cap, base·2^n)]`), and the whole
//! series is bounded by a time budget, so one request never spins: when the next wait would
//! overrun the budget, the error is returned and the operation log carries the work on.

use std::time::Duration;

/// What went wrong with one attempt, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// HTTP 429, with the server's `Retry-After` if it sent one.
    RateLimited { retry_after: Option<Duration> },
    /// HTTP 5xx.
    Server,
    /// No answer: connection refused or reset, or the per-attempt timeout.
    Network,
    /// Any other failure: retrying the same request cannot help.
    Permanent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
    /// Upper bound on the time spent waiting between attempts of one call.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
            budget: Duration::from_secs(12),
        }
    }
}

impl RetryPolicy {
    /// How long to wait before attempt `attempt + 1`, after attempt `attempt` (1-based) failed
    /// with `failure`, having already waited `waited`; `None` means give up now.
    ///
    /// `random` is a uniform draw in `[0, 1)` (injected so tests are deterministic).
    pub fn next_delay(&self, attempt: u32, failure: Failure, waited: Duration, random: f64) -> Option<Duration> {
        if attempt >= self.max_attempts || failure == Failure::Permanent {
            return None;
        }
        let exponential = self.base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1))).min(self.cap);
        let jittered = exponential.mul_f64(random.clamp(0.0, 1.0));
        let delay = match failure {
            // The server said how long; waiting less only earns another 429.
            Failure::RateLimited { retry_after: Some(after) } => after.max(jittered),
            _ => jittered,
        };
        (waited + delay <= self.budget).then_some(delay)
    }
}

/// Parses a `Retry-After` header: delay-seconds only (Cloudflare's API sends seconds).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn policy() -> RetryPolicy {
        RetryPolicy { max_attempts: 4, base: MS(100), cap: MS(1000), budget: MS(5000) }
    }

    #[test]
    fn retries_transient_failures_with_growing_capped_jittered_waits() {
        let p = policy();
        // random = 1.0 shows the ceiling of each wait: 100, 200, 400 ms.
        assert_eq!(p.next_delay(1, Failure::Server, MS(0), 1.0), Some(MS(100)));
        assert_eq!(p.next_delay(2, Failure::Network, MS(100), 1.0), Some(MS(200)));
        assert_eq!(p.next_delay(3, Failure::Server, MS(300), 1.0), Some(MS(400)));
        // Jitter scales the wait down.
        assert_eq!(p.next_delay(3, Failure::Server, MS(0), 0.5), Some(MS(200)));
        assert_eq!(p.next_delay(1, Failure::Server, MS(0), 0.0), Some(MS(0)));
        // The cap holds however many attempts are allowed.
        let long = RetryPolicy { max_attempts: 40, ..p };
        assert_eq!(long.next_delay(30, Failure::Server, MS(0), 1.0), Some(MS(1000)));
    }

    #[test]
    fn gives_up_after_max_attempts_or_on_permanent_failures() {
        let p = policy();
        assert_eq!(p.next_delay(4, Failure::Server, MS(0), 0.5), None);
        assert_eq!(p.next_delay(1, Failure::Permanent, MS(0), 0.5), None);
    }

    #[test]
    fn honours_retry_after_but_not_past_the_budget() {
        let p = policy();
        let limited = |secs| Failure::RateLimited { retry_after: Some(Duration::from_secs(secs)) };
        assert_eq!(p.next_delay(1, limited(2), MS(0), 0.1), Some(Duration::from_secs(2)));
        assert_eq!(p.next_delay(1, Failure::RateLimited { retry_after: None }, MS(0), 1.0), Some(MS(100)));
        // 2 s more would overrun the 5 s budget after 4 s of waiting: give up, do not spin.
        assert_eq!(p.next_delay(2, limited(2), MS(4000), 0.1), None);
        // A Retry-After beyond the whole budget is never waited for.
        assert_eq!(p.next_delay(1, limited(300), MS(0), 0.1), None);
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }
}
