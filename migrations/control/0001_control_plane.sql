-- Control plane: the tenant registry, the lifecycle operations log and the platform audit log.
-- Applied with `wrangler d1 migrations apply <control database> --remote` (ledger: d1_migrations).
-- Append-only: change the schema in a new numbered file, never here.

CREATE TABLE tenants (
    slug             TEXT PRIMARY KEY,
    display_name     TEXT NOT NULL,
    plan             TEXT NOT NULL DEFAULT 'free' CHECK (plan IN ('free', 'pro', 'enterprise')),
    status           TEXT NOT NULL CHECK (status IN ('provisioning', 'active', 'suspended', 'deleting', 'deleted', 'failed')),
    database_name    TEXT NOT NULL UNIQUE,
    database_id      TEXT UNIQUE,
    binding_name     TEXT NOT NULL UNIQUE,
    schema_version   INTEGER NOT NULL DEFAULT 0,
    status_message   TEXT,
    backup_location  TEXT,
    last_error       TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX tenants_by_status ON tenants (status, slug);

-- One row per lifecycle operation (create, delete, migrate, ...); `steps` is a JSON array of the
-- steps completed so far, so an operation cut short resumes at the first step not in it.
CREATE TABLE operations (
    id           TEXT PRIMARY KEY,
    tenant_slug  TEXT NOT NULL,
    kind         TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed')),
    steps        TEXT NOT NULL DEFAULT '[]',
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at  TEXT
);
CREATE INDEX operations_by_tenant ON operations (tenant_slug, created_at);
CREATE INDEX operations_unfinished ON operations (state) WHERE state IN ('pending', 'running');

-- Who did what on the control plane.
CREATE TABLE audit_log (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    tenant_slug  TEXT,
    request_id   TEXT,
    detail       TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant_slug, id);
