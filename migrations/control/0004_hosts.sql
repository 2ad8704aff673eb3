-- Binding hosts: small Worker scripts in a Workers for Platforms dispatch namespace that hold the
-- tenants' D1 bindings (at most HOST_CAPACITY each), so tenant churn never makes a version of the
-- main Worker and an account is bounded by its D1 limit, not by one script's ~5,000 bindings.

CREATE TABLE hosts (
    -- The script's name in the namespace, `{WORKER_SCRIPT_NAME}-host-{seq:04}`.
    name         TEXT PRIMARY KEY,
    seq          INTEGER NOT NULL UNIQUE,
    -- 'creating' until its script is uploaded (an upload is a PUT: idempotent), then 'ready'.
    state        TEXT NOT NULL DEFAULT 'creating' CHECK (state IN ('creating', 'ready')),
    -- Tenants placed on it (their slot is held while `tenants.host` names it).
    used         INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
    -- Bumped by every change of the host's wanted binding set; `applied_gen` is the generation
    -- the last converged reconcile of the host saw. A host with applied_gen < wanted_gen needs one.
    wanted_gen   INTEGER NOT NULL DEFAULT 1,
    applied_gen  INTEGER NOT NULL DEFAULT 0,
    -- The host code version uploaded (tenantry upgrades hosts whose code is older).
    code         TEXT,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- The host holding the tenant's slot (NULL: none).
ALTER TABLE tenants ADD COLUMN host TEXT;
-- 1 when requests reach the tenant's database through its host; 0 through the main Worker's own
-- binding (every tenant created before hosts existed, until the upgrade moves it).
ALTER TABLE tenants ADD COLUMN on_host INTEGER NOT NULL DEFAULT 0;
-- After a move to a host, the main Worker keeps the old binding until then (ms since the epoch),
-- so isolates still routing by a cached row keep working.
ALTER TABLE tenants ADD COLUMN main_until INTEGER;
CREATE INDEX tenants_by_host ON tenants (host, bind_wanted) WHERE host IS NOT NULL;
