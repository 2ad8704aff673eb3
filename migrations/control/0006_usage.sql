-- Usage metering, quotas and plan terms.

-- What each tenant used per UTC day, added to by each isolate's background flush.
CREATE TABLE usage_daily (
    tenant_slug   TEXT NOT NULL,
    day           TEXT NOT NULL,
    requests      INTEGER NOT NULL DEFAULT 0,
    rate_limited  INTEGER NOT NULL DEFAULT 0,
    rows_read     INTEGER NOT NULL DEFAULT 0,
    rows_written  INTEGER NOT NULL DEFAULT 0,
    -- The database's size as last seen that day (D1's meta.size_after), when a query said.
    size_bytes    INTEGER,
    PRIMARY KEY (tenant_slug, day)
);
CREATE INDEX usage_daily_by_day ON usage_daily (day);

-- The tenant's running count for its current month and its last seen size, kept on its row so
-- the request path's one control-plane read (cached per isolate) carries what quotas need.
ALTER TABLE tenants ADD COLUMN usage_month TEXT;
ALTER TABLE tenants ADD COLUMN month_requests INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tenants ADD COLUMN size_bytes INTEGER;
-- When the tenant's plan ends (RFC 3339, UTC); NULL: it does not.
ALTER TABLE tenants ADD COLUMN plan_expires_at TEXT;
-- The tenant's own quotas over its plan's, JSON {"api_calls_per_month", "storage_bytes"}.
ALTER TABLE tenants ADD COLUMN quotas TEXT;
