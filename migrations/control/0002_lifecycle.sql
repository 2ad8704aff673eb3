-- What the lifecycle sagas and the bindings reconciler need beyond 0001.

-- 1 when the tenant's binding should exist; the bindings reconciler binds exactly these tenants.
ALTER TABLE tenants ADD COLUMN bind_wanted INTEGER NOT NULL DEFAULT 0;
-- Identifies the create request (slug, name, plan, admin email) so a re-send resumes it.
ALTER TABLE tenants ADD COLUMN create_fingerprint TEXT;
ALTER TABLE tenants ADD COLUMN backup_bytes INTEGER;
ALTER TABLE tenants ADD COLUMN backup_sha256 TEXT;
ALTER TABLE tenants ADD COLUMN deleted_at TEXT;
CREATE INDEX tenants_bound ON tenants (bind_wanted) WHERE bind_wanted = 1;

-- The operation's input (for a create: the admin's email and password hash until seeded).
ALTER TABLE operations ADD COLUMN input TEXT NOT NULL DEFAULT '{}';
-- The step it will run next; NULL when finished.
ALTER TABLE operations ADD COLUMN next_step TEXT;
-- At most one unfinished operation per tenant: a create and a delete never run interleaved.
CREATE UNIQUE INDEX operations_one_open_per_tenant ON operations (tenant_slug) WHERE state IN ('pending', 'running');

-- Short leases that serialise work across Worker invocations: `bindings` (one settings PATCH
-- cycle at a time) and `tenant:{slug}` (one saga runner per tenant).
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  INTEGER NOT NULL
);
