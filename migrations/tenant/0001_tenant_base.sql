-- Base schema of every tenant database. Applied by the provisioner through the D1 REST query
-- endpoint, recorded in the tenant's own d1_migrations ledger (the table wrangler uses).
-- Append-only: change the schema in a new numbered file, never here.

-- Facts about the database itself. `slug` is stamped at creation; the Worker refuses to serve a
-- tenant from a database stamped with another slug (a mis-wired binding can never leak data).
CREATE TABLE tenant_meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

CREATE TABLE projects (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL,
    description  TEXT NOT NULL DEFAULT '',
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
