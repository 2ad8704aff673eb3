-- Anchors of the tenants' audit chains: the head (last sealed row and its hash) the operator's
-- last verification found whole, kept outside the tenant's database, so a tenant log rewritten
-- from some row on with every later hash recomputed no longer matches its anchor.
CREATE TABLE audit_anchors (
    tenant_slug  TEXT PRIMARY KEY,
    -- The database the head was read from (a restore from a backup moves the tenant to another).
    database_id  TEXT NOT NULL,
    last_id      INTEGER NOT NULL,
    hash         TEXT NOT NULL,
    anchored_at  TEXT NOT NULL
);
