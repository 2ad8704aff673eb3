-- Backups and restores: every backup kept in R2 (scheduled, at delete, or asked for), what was
-- read back to verify it, and the databases a restore holds besides the tenant's own.

CREATE TABLE backups (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_slug     TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('scheduled', 'manual', 'delete')),
    object_key      TEXT NOT NULL UNIQUE,
    database_id     TEXT NOT NULL,
    schema_version  INTEGER NOT NULL,
    bytes           INTEGER NOT NULL,
    sha256          TEXT NOT NULL,
    -- What D1's import asks for as the file's `etag` when the backup is restored.
    md5             TEXT NOT NULL,
    -- JSON {table: rows} counted in the dump: what a restore from it must find again.
    row_counts      TEXT NOT NULL DEFAULT '{}',
    taken_at        INTEGER NOT NULL,
    verified_at     INTEGER NOT NULL
);
CREATE INDEX backups_by_tenant ON backups (tenant_slug, taken_at);

-- The scheduled fan-out: a tenant is due when its last backup is older than the interval; it is
-- taken in order of its last attempt, so a tenant that keeps failing never starves the others.
ALTER TABLE tenants ADD COLUMN backed_up_at INTEGER;
ALTER TABLE tenants ADD COLUMN backup_tried_at INTEGER;
ALTER TABLE tenants ADD COLUMN backup_error TEXT;
-- While a restore runs: its operation's id, and since when (ms). Requests get 503 meanwhile.
ALTER TABLE tenants ADD COLUMN restoring TEXT;
ALTER TABLE tenants ADD COLUMN restoring_since INTEGER;
CREATE INDEX tenants_backup_due ON tenants (status, backup_tried_at);

-- Databases a tenant holds besides its own: the one a restore from a backup imports into (until
-- it is switched to), and the one it replaced (kept until `drop_after`, or the operator's
-- confirmation). The orphan scan counts them as owned.
CREATE TABLE spare_databases (
    name         TEXT PRIMARY KEY,
    tenant_slug  TEXT NOT NULL,
    database_id  TEXT,
    role         TEXT NOT NULL CHECK (role IN ('restore', 'replaced')),
    operation_id TEXT NOT NULL,
    drop_after   INTEGER
);
CREATE INDEX spare_databases_by_tenant ON spare_databases (tenant_slug);
