//! Usage in the control plane: each isolate's flush of its counts, and the admin API's views of
//! them, per tenant and per day or month, and across the fleet.

use serde::{Deserialize, Serialize};

use super::{ControlStore, Result};
use crate::core::usage::DayUsage;
use crate::sql;
use crate::store::sql::Sql;

/// One tenant-day (or tenant-month) of usage as the admin API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRow {
    /// `YYYY-MM-DD`, or `YYYY-MM` for a month.
    pub period: String,
    pub requests: i64,
    pub rate_limited: i64,
    pub rows_read: i64,
    pub rows_written: i64,
    pub size_bytes: Option<i64>,
}

/// One tenant's usage in a month, for the fleet summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantMonth {
    pub slug: String,
    pub requests: i64,
    pub rate_limited: i64,
    pub rows_read: i64,
    pub rows_written: i64,
    pub size_bytes: Option<i64>,
}

const SUMS: &str = "SUM(requests) AS requests, SUM(rate_limited) AS rate_limited, SUM(rows_read) AS rows_read, \
                    SUM(rows_written) AS rows_written";

impl<S: Sql> ControlStore<S> {
    /// Adds an isolate's counts, in one batch: each tenant-day's row, and the tenant's running
    /// month (started afresh when the month changed; counts of a month already over are kept in
    /// its days only).
    pub async fn record_usage(&self, usage: &[DayUsage]) -> Result<()> {
        let mut batch = Vec::with_capacity(usage.len() * 2);
        for u in usage {
            let c = &u.counters;
            let size = c.size_bytes.map(|s| s as i64);
            batch.push(sql!(
                "INSERT INTO usage_daily (tenant_slug, day, requests, rate_limited, rows_read, rows_written, size_bytes) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (tenant_slug, day) DO UPDATE SET \
                 requests = requests + excluded.requests, rate_limited = rate_limited + excluded.rate_limited, \
                 rows_read = rows_read + excluded.rows_read, rows_written = rows_written + excluded.rows_written, \
                 size_bytes = COALESCE(excluded.size_bytes, size_bytes)",
                u.slug.as_str(),
                u.day.as_str(),
                c.requests as i64,
                c.limited as i64,
                c.rows_read as i64,
                c.rows_written as i64,
                size
            ));
            batch.push(sql!(
                "UPDATE tenants SET \
                 month_requests = CASE WHEN usage_month = ?2 THEN month_requests + ?3 ELSE ?3 END, \
                 usage_month = ?2, size_bytes = COALESCE(?4, size_bytes) \
                 WHERE slug = ?1 AND (usage_month IS NULL OR usage_month <= ?2)",
                u.slug.as_str(),
                u.month(),
                c.requests as i64,
                size
            ));
        }
        self.db.batch(batch).await.map(drop)
    }

    /// `slug`'s usage per day from `from` to `to` (inclusive, `YYYY-MM-DD`), oldest first.
    pub async fn usage_days(&self, slug: &str, from: &str, to: &str) -> Result<Vec<UsageRow>> {
        self.db
            .all(sql!(
                "SELECT day AS period, requests, rate_limited, rows_read, rows_written, size_bytes FROM usage_daily \
                 WHERE tenant_slug = ?1 AND day >= ?2 AND day <= ?3 ORDER BY day",
                slug,
                from,
                to
            ))
            .await
    }

    /// `slug`'s usage per month over the same days; a month's size is its last day's.
    pub async fn usage_months(&self, slug: &str, from: &str, to: &str) -> Result<Vec<UsageRow>> {
        self.db
            .all(sql!(
                format!(
                    "SELECT substr(day, 1, 7) AS period, {SUMS}, \
                     (SELECT size_bytes FROM usage_daily l WHERE l.tenant_slug = ?1 AND substr(l.day, 1, 7) = \
                      substr(u.day, 1, 7) AND l.size_bytes IS NOT NULL ORDER BY l.day DESC LIMIT 1) AS size_bytes \
                     FROM usage_daily u WHERE tenant_slug = ?1 AND day >= ?2 AND day <= ?3 \
                     GROUP BY substr(day, 1, 7) ORDER BY period"
                ),
                slug,
                from,
                to
            ))
            .await
    }

    /// The fleet's totals for `month` (`YYYY-MM`).
    pub async fn fleet_usage(&self, month: &str) -> Result<(i64, UsageRow)> {
        #[derive(Deserialize)]
        struct Totals {
            tenants: i64,
            requests: Option<i64>,
            rate_limited: Option<i64>,
            rows_read: Option<i64>,
            rows_written: Option<i64>,
        }
        let t: Option<Totals> = self
            .db
            .first(sql!(
                format!("SELECT COUNT(DISTINCT tenant_slug) AS tenants, {SUMS} FROM usage_daily WHERE substr(day, 1, 7) = ?1"),
                month
            ))
            .await?;
        let size: Option<i64> = self
            .db
            .first::<serde_json::Value>(sql!(
                "SELECT SUM(size_bytes) AS size FROM tenants WHERE status NOT IN ('deleted', 'deleting')"
            ))
            .await?
            .and_then(|v| v.get("size").and_then(serde_json::Value::as_i64));
        let t =
            t.unwrap_or(Totals { tenants: 0, requests: None, rate_limited: None, rows_read: None, rows_written: None });
        Ok((
            t.tenants,
            UsageRow {
                period: month.to_owned(),
                requests: t.requests.unwrap_or(0),
                rate_limited: t.rate_limited.unwrap_or(0),
                rows_read: t.rows_read.unwrap_or(0),
                rows_written: t.rows_written.unwrap_or(0),
                size_bytes: size,
            },
        ))
    }

    /// Tenants' usage in `month`, by requests (most first), `limit` of them after `offset`.
    pub async fn fleet_usage_by_tenant(&self, month: &str, limit: u32, offset: u32) -> Result<Vec<TenantMonth>> {
        self.db
            .all(sql!(
                format!(
                    "SELECT tenant_slug AS slug, {SUMS}, (SELECT size_bytes FROM tenants WHERE slug = tenant_slug) AS size_bytes \
                     FROM usage_daily WHERE substr(day, 1, 7) = ?1 GROUP BY tenant_slug \
                     ORDER BY requests DESC, slug LIMIT ?2 OFFSET ?3"
                ),
                month,
                limit,
                offset
            ))
            .await
    }
}
