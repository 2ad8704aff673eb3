-- Fleet operations: migration fan-out state, entity sync, settings defaults, maintenance.

-- The last migration error of the tenant's database (NULL when it is up to date or untried).
ALTER TABLE tenants ADD COLUMN migration_error TEXT;
-- The entity (roles) version last synced into the tenant's database.
ALTER TABLE tenants ADD COLUMN synced_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tenants ADD COLUMN sync_error TEXT;
-- Maintenance: requests answer 503 with this message until `maintenance_until` (ISO 8601).
ALTER TABLE tenants ADD COLUMN maintenance_message TEXT;
ALTER TABLE tenants ADD COLUMN maintenance_until TEXT;

-- Roles defined once for the platform and copied into every tenant (read-only there).
CREATE TABLE roles (
    name         TEXT PRIMARY KEY,
    description  TEXT NOT NULL DEFAULT '',
    permissions  TEXT NOT NULL DEFAULT '[]',
    updated_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- Default settings every tenant inherits unless it overrides them.
CREATE TABLE settings_defaults (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- Platform-wide state: `entity_version` (bumped on every role change), `maintenance` (JSON).
CREATE TABLE platform (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
INSERT INTO platform (key, value) VALUES ('entity_version', '0');
