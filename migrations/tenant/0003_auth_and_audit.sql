-- Login throttling and the tenant's audit log.

-- Failed logins per email in the current 15-minute window (unknown emails are counted too, so
-- the throttle says nothing about which emails exist).
CREATE TABLE login_attempts (
    email         TEXT PRIMARY KEY COLLATE NOCASE,
    window_start  INTEGER NOT NULL,
    failures      INTEGER NOT NULL
);

-- Who did what in this tenant: logins, user and project changes.
CREATE TABLE audit_log (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    actor_id     INTEGER,
    actor_email  TEXT,
    action       TEXT NOT NULL,
    target       TEXT,
    request_id   TEXT NOT NULL,
    detail       TEXT NOT NULL DEFAULT '{}'
);

ALTER TABLE projects ADD COLUMN created_by INTEGER;
