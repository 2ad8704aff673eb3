//! Usage metering: what each tenant used, per UTC day, counted in an isolate and written to the
//! control plane in batches, never on a request's own path.
//!
//! A request adds its counts to this isolate's [`UsageBuffer`]. The first count into an empty
//! buffer schedules a flush [`FLUSH_AFTER_MS`] later (a `ctx.waitUntil` that sleeps, then
//! flushes, so an isolate that goes quiet still flushes), and a buffer holding
//! [`FLUSH_AT_ENTRIES`] tenant-days is flushed at once. A flush adds the whole buffer to the
//! control plane's `usage_daily` rows in one batch (all of it or nothing); a failed one puts its
//! counts back and is scheduled again. What an isolate has not flushed when it dies is lost: at
//! most [`FLUSH_AFTER_MS`] of its traffic.
//!
//! Time is passed in (milliseconds since the epoch), so all of it is tested without a clock.

use std::collections::BTreeMap;

/// How long a count may wait in an isolate before a flush is started.
pub const FLUSH_AFTER_MS: f64 = 10_000.0;
/// Tenant-days in a buffer that start a flush at once (one statement each in the flush's batch).
pub const FLUSH_AT_ENTRIES: usize = 50;
/// A scheduled or running flush not heard of for this long is taken to be dead (its request's
/// `waitUntil` ended, 30 s at most): the next count schedules another. Counts are never lost to
/// this: each is in exactly one flush's batch or in the buffer.
pub const STALE_MS: f64 = 30_000.0;

/// What one tenant used on one day (or what one request used).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests served (rate-limited ones are not: they are `limited`).
    pub requests: u64,
    /// Requests refused by a rate limit.
    pub limited: u64,
    /// D1 rows read and written, from each result's `meta`.
    pub rows_read: u64,
    pub rows_written: u64,
    /// The database's size in bytes as last seen (`meta.size_after`), if a query reported it.
    pub size_bytes: Option<u64>,
}

impl Counters {
    /// `other` added on: sums, and the later size.
    pub fn add(&mut self, other: &Counters) {
        self.requests += other.requests;
        self.limited += other.limited;
        self.rows_read += other.rows_read;
        self.rows_written += other.rows_written;
        if other.size_bytes.is_some() {
            self.size_bytes = other.size_bytes;
        }
    }
}

/// One tenant-day's counts, as a flush writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayUsage {
    pub slug: String,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub counters: Counters,
}

impl DayUsage {
    /// `YYYY-MM`.
    pub fn month(&self) -> &str {
        &self.day[..7]
    }
}

/// What the caller of [`UsageBuffer::record`] must start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Nothing: a flush is already scheduled or running.
    No,
    /// A flush after [`FLUSH_AFTER_MS`].
    Later,
    /// A flush now (the buffer is full).
    Now,
}

/// An isolate's counts waiting to be flushed.
#[derive(Debug, Default)]
pub struct UsageBuffer {
    /// Counts by UTC day, then by tenant.
    days: BTreeMap<String, BTreeMap<String, Counters>>,
    /// The day of the last count (days since the epoch, and as text), so a request formats no
    /// date and allocates no key unless its tenant-day is new.
    today: Option<(i64, String)>,
    /// When the flush that has not taken the buffer yet was scheduled.
    scheduled: Option<f64>,
    /// When the running flush took the buffer (its counts are out of it); one at a time.
    flushing: Option<f64>,
}

impl UsageBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one request's counts for `slug` at time `now`, and says which flush to start.
    pub fn record(&mut self, slug: &str, now: f64, counters: &Counters) -> Flush {
        let epoch_day = (now / 86_400_000.0).floor() as i64;
        let day = match &mut self.today {
            Some((d, text)) if *d == epoch_day => &*text,
            today => &today.insert((epoch_day, day_of(now))).1,
        };
        match self.days.get_mut(day) {
            Some(slugs) => match slugs.get_mut(slug) {
                Some(c) => c.add(counters),
                None => drop(slugs.insert(slug.to_owned(), *counters)),
            },
            None => drop(self.days.insert(day.clone(), BTreeMap::from([(slug.to_owned(), *counters)]))),
        }
        let alive = |since: Option<f64>, for_ms: f64| since.is_some_and(|t| now - t < for_ms);
        if alive(self.flushing, STALE_MS) {
            // The running flush schedules the next when it ends (`flushed`).
            Flush::No
        } else if self.entries() >= FLUSH_AT_ENTRIES {
            self.scheduled = Some(now);
            Flush::Now
        } else if alive(self.scheduled, FLUSH_AFTER_MS + STALE_MS) {
            Flush::No
        } else {
            self.scheduled = Some(now);
            Flush::Later
        }
    }

    /// Everything waiting, out of the buffer, for a flush that must end with [`Self::flushed`].
    /// Empty when another flush runs (or took it already).
    pub fn take(&mut self, now: f64) -> Vec<DayUsage> {
        if self.flushing.is_some_and(|t| now - t < STALE_MS) {
            return Vec::new();
        }
        self.flushing = Some(now);
        self.scheduled = None;
        std::mem::take(&mut self.days)
            .into_iter()
            .flat_map(|(day, slugs)| {
                slugs.into_iter().map(move |(slug, counters)| DayUsage { slug, day: day.clone(), counters })
            })
            .collect()
    }

    /// Tenant-days waiting.
    fn entries(&self) -> usize {
        self.days.values().map(BTreeMap::len).sum()
    }

    /// The flush of `taken` is over; when it failed, its counts wait again. True when counts
    /// are waiting and the caller must schedule the next flush ([`Flush::Later`]).
    pub fn flushed(&mut self, taken: Vec<DayUsage>, ok: bool, now: f64) -> bool {
        self.flushing = None;
        for usage in taken.into_iter().filter(|_| !ok) {
            let mut counters = usage.counters;
            // Counts added since the take are newer: their size wins.
            let entry = self.days.entry(usage.day).or_default().entry(usage.slug).or_default();
            if entry.size_bytes.is_some() {
                counters.size_bytes = entry.size_bytes;
            }
            counters.add(&Counters { size_bytes: None, ..*entry });
            *entry = counters;
        }
        let again = !self.days.is_empty() && self.scheduled.is_none();
        if again {
            self.scheduled = Some(now);
        }
        again
    }

    /// The flush [`Self::flushed`] scheduled will not run: the next count schedules one.
    pub fn unschedule(&mut self) {
        self.scheduled = None;
    }

    /// Requests for `slug` in `month` (`YYYY-MM`) waiting in this buffer: what the control
    /// plane's count for the month does not hold yet.
    pub fn pending_requests(&self, slug: &str, month: &str) -> u64 {
        self.days
            .iter()
            .filter(|(day, _)| day.starts_with(month))
            .filter_map(|(_, slugs)| slugs.get(slug))
            .map(|c| c.requests)
            .sum()
    }
}

/// The UTC day (`YYYY-MM-DD`) of `ms` milliseconds since the epoch.
pub fn day_of(ms: f64) -> String {
    let days = (ms / 86_400_000.0).floor() as i64;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The UTC month (`YYYY-MM`) of `ms`.
pub fn month_of(ms: f64) -> String {
    day_of(ms)[..7].to_owned()
}

/// Is `text` a month, `YYYY-MM`?
pub fn is_month(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 7
        && b[4] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || c.is_ascii_digit())
        && (1..=12).contains(&text[5..].parse::<u32>().unwrap_or(0))
}

/// Is `text` a day, `YYYY-MM-DD` (a real date)?
pub fn is_day(text: &str) -> bool {
    text.len() == 10
        && text.as_bytes()[7] == b'-'
        && is_month(&text[..7])
        && text[8..].bytes().all(|c| c.is_ascii_digit())
        && text[8..].parse::<u32>().is_ok_and(|d| d >= 1 && d <= days_in_month(&text[..7]))
}

fn days_in_month(month: &str) -> u32 {
    let (y, m): (i64, u32) = (month[..4].parse().unwrap_or(1970), month[5..].parse().unwrap_or(1));
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's `civil_from_days`: the proleptic Gregorian date of a day count.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: f64 = 86_400_000.0;
    // 2026-11-24T00:00:00Z
    const T: f64 = 1_795_478_400_000.0;

    fn one(requests: u64, rows_read: u64, size: Option<u64>) -> Counters {
        Counters { requests, rows_read, size_bytes: size, ..Counters::default() }
    }

    #[test]
    fn days_and_months() {
        assert_eq!(day_of(0.0), "1970-01-01");
        assert_eq!(day_of(T), "2026-11-24");
        assert_eq!(day_of(T - 1.0), "2026-11-23");
        assert_eq!(day_of(951_782_400_000.0), "2000-02-29");
        assert_eq!(month_of(T + 7.0 * DAY), "2026-12");
        for ok in ["2026-11", "1999-01", "2026-12"] {
            assert!(is_month(ok), "{ok}");
        }
        for bad in ["2026-13", "2026-00", "2026-1", "202611", "2026-1x", "abcd-11", ""] {
            assert!(!is_month(bad), "{bad}");
        }
        for ok in ["2026-11-24", "2024-02-29", "2026-12-31"] {
            assert!(is_day(ok), "{ok}");
        }
        for bad in ["2026-02-29", "2026-11-31", "2026-11-00", "2026-11-2x", "2026-11-244", "2026/11/24"] {
            assert!(!is_day(bad), "{bad}");
        }
    }

    #[test]
    fn counts_add_up_per_tenant_day_and_one_flush_is_scheduled() {
        let mut b = UsageBuffer::new();
        assert_eq!(b.record("acme", T, &one(1, 10, Some(100))), Flush::Later, "the first count schedules a flush");
        assert_eq!(b.record("acme", T + 1.0, &one(1, 5, None)), Flush::No);
        assert_eq!(b.record("globex", T + 2.0, &one(1, 1, Some(7))), Flush::No);
        assert_eq!(b.pending_requests("acme", "2026-11"), 2);
        assert_eq!(b.pending_requests("acme", "2026-12"), 0);
        let taken = b.take(T + 10.0);
        assert!(b.take(T + 11.0).is_empty(), "one flush at a time");
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0].slug, "acme");
        assert_eq!(taken[0].counters, one(2, 15, Some(100)));
        assert_eq!(taken[0].month(), "2026-11");
        assert_eq!(b.record("acme", T + 3.0, &one(1, 0, None)), Flush::No, "the running flush schedules the next");
        assert!(b.flushed(taken, true, T + 12.0), "a count came in meanwhile: schedule again");
        assert_eq!(b.pending_requests("acme", "2026-11"), 1);
        assert_eq!(b.take(T + 13.0).len(), 1);
        assert!(!b.flushed(Vec::new(), true, T + 14.0), "nothing left: nothing scheduled");
        assert_eq!(b.record("acme", T + 15.0, &one(1, 0, None)), Flush::Later);
    }

    #[test]
    fn a_flush_that_died_does_not_stop_the_next() {
        let mut b = UsageBuffer::new();
        assert_eq!(b.record("acme", T, &one(1, 0, None)), Flush::Later);
        // Its waitUntil was cut off before it ran: a later count schedules another.
        assert_eq!(b.record("acme", T + FLUSH_AFTER_MS + STALE_MS - 1.0, &one(1, 0, None)), Flush::No);
        assert_eq!(b.record("acme", T + FLUSH_AFTER_MS + STALE_MS, &one(1, 0, None)), Flush::Later);
        // One that took the buffer and died: its counts are gone with it, the next ones flush.
        let lost = b.take(T + 60_000.0);
        assert_eq!(lost.len(), 1);
        assert_eq!(b.record("acme", T + 60_001.0, &one(1, 0, None)), Flush::No);
        assert!(b.take(T + 60_002.0).is_empty());
        assert_eq!(b.record("acme", T + 60_000.0 + STALE_MS, &one(1, 0, None)), Flush::Later);
        assert_eq!(b.take(T + 60_000.0 + STALE_MS + 1.0).len(), 1);
    }

    #[test]
    fn a_failed_flush_puts_its_counts_back_under_newer_ones() {
        let mut b = UsageBuffer::new();
        b.record("acme", T, &one(3, 30, Some(100)));
        let taken = b.take(T + 1.0);
        b.record("acme", T + 5.0, &one(1, 1, Some(200)));
        assert!(b.flushed(taken, false, T + 6.0), "failed: scheduled again");
        assert_eq!(b.pending_requests("acme", "2026-11"), 4);
        let again = b.take(T + 7.0);
        assert_eq!(again[0].counters, one(4, 31, Some(200)), "the newer size wins");
        assert!(b.flushed(again, false, T + 8.0));
        assert_eq!(b.record("acme", T + 6.0, &one(1, 0, None)), Flush::No, "already scheduled");
    }

    #[test]
    fn many_tenants_make_a_flush_start_at_once() {
        let mut b = UsageBuffer::new();
        for i in 0..FLUSH_AT_ENTRIES - 1 {
            b.record(&format!("t{i}"), T, &one(1, 0, None));
        }
        assert_eq!(b.record("last", T, &one(1, 0, None)), Flush::Now);
    }

    #[test]
    fn a_day_boundary_splits_the_counts() {
        let mut b = UsageBuffer::new();
        b.record("acme", T - 1.0, &one(1, 0, None));
        b.record("acme", T, &one(1, 0, None));
        let days: Vec<String> = b.take(T).into_iter().map(|u| u.day).collect();
        assert_eq!(days, ["2026-11-23", "2026-11-24"]);
    }
}
