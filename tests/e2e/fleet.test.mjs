// Fleet operations with 50 tenants: a migration shipped while tenants are at the old version
// reaches all of them; one that fails on some leaves those at the old version with the error
// recorded and the rest migrated; running again after the fix completes.

import { spawnSync } from "node:child_process";
import path from "node:path";
import pLimit from "p-limit";
import { beforeAll, expect, test } from "vitest";
import { ROOT } from "../../cloud/stack.mjs";
import { newestMigrationAdds, rollBackNewestSql, tenantMigrations } from "../../cloud/provision.mjs";
import { admin, authed, createTenant, freshSlug, setBindings, sql, stack } from "../helpers.mjs";

const FLEET = 50;
const LATEST = tenantMigrations().length;
const NEWEST = tenantMigrations().at(-1).name;
/** What the newest migration adds: the last of it is made to fail on some tenants, the rest must then not be there. */
const ADDS = newestMigrationAdds();
const CONFLICT = /** @type {(typeof ADDS)[number]} */ (ADDS.at(-1));
let fleet;

beforeAll(async () => {
  const tag = freshSlug("fleet");
  const slugs = Array.from({ length: FLEET }, (_, i) => `${tag}-${i}`);
  fleet = await pLimit(10).map(slugs, (slug) => createTenant(slug)); // 10 creates at a time
}, 300_000);

/** Puts a tenant back at the version before the newest migration, as if that had just shipped. */
async function rollBack(t) {
  await sql(t.uuid, rollBackNewestSql());
  await sql(stack.controlDatabaseId, "UPDATE tenants SET schema_version = ?1 WHERE slug = ?2", [LATEST - 1, t.slug]);
}

/** The SQL that makes the newest migration fail on a tenant (its last addition is there already), and the fix. */
const conflict =
  CONFLICT.kind === "column"
    ? {
        make: `ALTER TABLE ${CONFLICT.table} ADD COLUMN ${CONFLICT.name} INTEGER`,
        fix: `ALTER TABLE ${CONFLICT.table} DROP COLUMN ${CONFLICT.name}`,
      }
    : { make: `CREATE TABLE ${CONFLICT.name} (conflicting INTEGER)`, fix: `DROP TABLE ${CONFLICT.name}` };

/**
 * How many of the newest migration's additions other than the conflicting one tenant `t` has.
 * @param {{ uuid: string }} t
 */
async function partlyMigrated(t) {
  let found = 0;
  for (const added of ADDS.slice(0, -1)) {
    const [statement, params] =
      added.kind === "column"
        ? ["SELECT count(*) AS n FROM pragma_table_info(?1) WHERE name = ?2", [added.table, added.name]]
        : ["SELECT count(*) AS n FROM sqlite_master WHERE name = ?1 AND type = ?2", [added.name, added.kind]];
    found += (await sql(t.uuid, statement, params))[0].results[0].n;
  }
  return found;
}

/** A new Worker version starts fresh isolates (this is what a deploy does). */
const redeploy = () => setBindings((bindings) => bindings);

const migrateCli = () =>
  spawnSync(
    process.execPath,
    [path.join(ROOT, "scripts", "migrate.mjs"), "--url", stack.url, "--token", stack.adminToken, "--limit", "20"],
    { encoding: "utf8" },
  );

const ledger = async (t) => (await sql(t.uuid, "SELECT name FROM d1_migrations ORDER BY id"))[0].results.map((r) => r.name);

test("a migration reaches every tenant; failures are isolated, recorded, and fixed by running again", { timeout: 300_000 }, async () => {
  expect(fleet).toHaveLength(FLEET);
  await Promise.all(fleet.map(rollBack));
  // Five tenants hold an object that makes the new migration fail there.
  const broken = fleet.slice(0, 5);
  for (const t of broken) await sql(t.uuid, conflict.make);
  await redeploy();

  const before = await admin("GET", "/v1/migrations/status");
  expect(before.json.latest).toBe(LATEST);
  expect(before.json.behind).toBeGreaterThanOrEqual(FLEET);

  const run = migrateCli();
  console.log(
    run.stdout
      .split("\n")
      .filter((l) => !l.startsWith("  ✓"))
      .join("\n"),
  );
  expect(run.status).toBe(1);
  expect(run.stdout).toMatch(/migrated, 5 failed/);
  expect(run.stdout.match(/ ✓ /g)?.length).toBeGreaterThanOrEqual(FLEET - 5);

  const after = await admin("GET", "/v1/migrations/status");
  const failedSlugs = after.json.failures.map((f) => f.slug).sort();
  expect(failedSlugs).toEqual(broken.map((t) => t.slug).sort());
  for (const f of after.json.failures) {
    expect(f.schema_version).toBe(LATEST - 1);
    expect(f.migration_error).toMatch(new RegExp(`${NEWEST}.*${CONFLICT.name}`));
  }
  // Atomic: a failed tenant has none of the migration (not even what comes before the failing
  // statement), and is not served.
  for (const t of broken) {
    expect(await ledger(t)).not.toContain(NEWEST);
    expect(await partlyMigrated(t)).toBe(0);
    const res = await authed(t.slug, t.token, "/api/projects");
    expect([res.status, res.json.error.code]).toEqual([503, "tenant_migrating"]);
  }
  for (const t of fleet.slice(5)) expect(await ledger(t)).toContain(NEWEST);
  expect((await authed(fleet[10].slug, fleet[10].token, "/api/projects")).status).toBe(200);

  // The fix, then the same command again.
  for (const t of broken) await sql(t.uuid, conflict.fix);
  const again = migrateCli();
  expect(again.status, again.stdout).toBe(0);
  const final = await admin("GET", "/v1/migrations/status");
  expect(final.json.failures).toEqual([]);
  expect(final.json.behind).toBe(0);
  for (const t of broken) {
    expect(await ledger(t)).toContain(NEWEST);
    expect((await authed(t.slug, t.token, "/api/projects")).status).toBe(200);
  }
});

test("a tenant behind the code is migrated on its first request (through its binding)", async () => {
  const t = fleet[20];
  await rollBack(t);
  await redeploy();
  const before = await admin("GET", "/v1/migrations/status");
  const res = await authed(t.slug, t.token, "/api/projects");
  expect(res.status, res.text).toBe(200);
  expect(await ledger(t)).toContain(NEWEST);
  // Recorded in the control plane at once, not at the next fleet run.
  const [row] = (await sql(stack.controlDatabaseId, "SELECT schema_version, migration_error FROM tenants WHERE slug = ?1", [t.slug]))[0]
    .results;
  expect(row).toEqual({ schema_version: LATEST, migration_error: null });
  const after = await admin("GET", "/v1/migrations/status");
  expect(after.json.behind).toBe(before.json.behind - 1);
});

test("the admin API validates fan-out parameters", async () => {
  expect((await admin("POST", "/v1/migrations/apply", { limit: 0 })).status).toBe(422);
  expect((await admin("POST", "/v1/migrations/apply", { concurrency: "many" })).status).toBe(422);
  expect((await admin("POST", "/v1/migrations/apply", { bogus: 1 })).status).toBe(422);
  expect((await admin("GET", "/v1/migrations/apply")).status).toBe(405);
  const done = await admin("POST", "/v1/migrations/apply", {});
  expect(done.status).toBe(200);
  expect(done.json).toMatchObject({ latest: LATEST, next: null });
});

test(
  "system roles reach every tenant, are read-only there, follow changes and removal; failures are retried",
  { timeout: 240_000 },
  async () => {
    const name = `auditor-${Date.now().toString(36)}`;
    const created = await admin("POST", "/v1/roles", {
      name,
      description: "reads everything",
      permissions: ["projects:read", "users:read"],
    });
    expect(created.status, created.text).toBe(201);
    expect((await admin("POST", "/v1/roles", { name })).status).toBe(409);
    expect((await admin("POST", "/v1/roles", { name: "Bad Name" })).status).toBe(422);
    // Finish the pass (the create ran one bounded pass; the cron carries the rest).
    while ((await admin("POST", "/v1/migrations/apply", {})).json.next) {
      /* a pass per call */
    }
    const systemRole = async (t) =>
      (await sql(t.uuid, "SELECT description, permissions, is_system FROM roles WHERE name = ?1", [name]))[0].results[0];
    const all = await Promise.all(fleet.map(systemRole));
    const missing = fleet.filter((_, i) => !(all[i]?.is_system === 1 && all[i].description === "reads everything"));
    const debug = missing.length
      ? JSON.stringify([
          (await sql(stack.controlDatabaseId, "SELECT * FROM roles"))[0].results,
          (await sql(stack.controlDatabaseId, "SELECT slug, synced_version, sync_error, schema_version FROM tenants LIMIT 3"))[0].results,
          (await sql(fleet[0].uuid, "SELECT * FROM roles"))[0].results,
        ])
      : "";
    expect(
      missing.map((t) => t.slug),
      debug,
    ).toEqual([]);

    // Read-only on the tenant; the tenant's own roles are its to manage.
    const t = fleet[3];
    const listed = await authed(t.slug, t.token, "/api/roles");
    expect(listed.json.roles.find((r) => r.name === name)).toMatchObject({ is_system: true, permissions: ["projects:read", "users:read"] });
    const change = await authed(t.slug, t.token, `/api/roles/${name}`, { method: "PATCH", body: { description: "mine now" } });
    expect([change.status, change.json.error.code]).toEqual([403, "system_role_read_only"]);
    expect((await authed(t.slug, t.token, `/api/roles/${name}`, { method: "DELETE" })).status).toBe(403);
    const own = await authed(t.slug, t.token, "/api/roles", { method: "POST", body: { name: "reviewer", permissions: ["projects:read"] } });
    expect(own.status).toBe(201);
    expect(
      (await authed(t.slug, t.token, "/api/roles/reviewer", { method: "PATCH", body: { description: "reviews" } })).json.role.description,
    ).toBe("reviews");

    // A tenant where the sync fails (a trigger refuses writes to roles): recorded, the rest synced.
    const stubborn = fleet[7];
    await sql(stubborn.uuid, "CREATE TRIGGER refuse_roles BEFORE UPDATE ON roles BEGIN SELECT RAISE(ABORT, 'roles are frozen here'); END");
    const updated = await admin("PATCH", `/v1/roles/${name}`, { description: "reads everything, carefully" });
    expect(updated.status).toBe(200);
    while ((await admin("POST", "/v1/migrations/apply", {})).json.next) {
      /* continue the pass */
    }
    const status = await admin("GET", "/v1/migrations/status");
    expect(status.json.entities.sync_failures).toEqual([
      { slug: stubborn.slug, sync_error: expect.stringMatching(/roles are frozen here/) },
    ]);
    expect((await systemRole(stubborn)).description).toBe("reads everything");
    expect((await systemRole(fleet[8])).description).toBe("reads everything, carefully");
    // Fixed: the reconciler (cron) retries it.
    await sql(stubborn.uuid, "DROP TRIGGER refuse_roles");
    // Each cron run does one bounded pass from where the last stopped: a few runs at most.
    let runs = 0;
    while ((await systemRole(stubborn)).description !== "reads everything, carefully" && runs < 5) {
      expect((await admin("POST", "/v1/reconcile")).status).toBe(200);
      runs++;
    }
    expect((await systemRole(stubborn)).description).toBe("reads everything, carefully");
    expect((await admin("GET", "/v1/migrations/status")).json.entities.sync_failures).toEqual([]);

    // New tenants get the roles at creation.
    const fresh = await createTenant();
    expect((await systemRole(fresh))?.is_system).toBe(1);

    // Removed on the control plane: removed everywhere; the tenant's own role stays.
    expect((await admin("DELETE", `/v1/roles/${name}`)).status).toBe(200);
    while ((await admin("POST", "/v1/migrations/apply", {})).json.next) {
      /* continue the pass */
    }
    expect((await Promise.all(fleet.map(systemRole))).filter(Boolean)).toEqual([]);
    expect((await authed(t.slug, t.token, "/api/roles")).json.roles.map((r) => r.name)).toContain("reviewer");
    expect((await admin("DELETE", `/v1/roles/${name}`)).status).toBe(404);
  },
);

test("settings: control-plane defaults overlaid with tenant overrides, with their source", async () => {
  const set = await admin("PATCH", "/v1/settings", { theme: "dark", "uploads.max_mb": 10 });
  expect(set.json.settings).toMatchObject({ theme: "dark", "uploads.max_mb": 10 });
  const t = fleet[4];
  const get = async () => (await authed(t.slug, t.token, "/api/settings")).json.settings;
  expect(await get()).toMatchObject({ theme: { value: "dark", source: "default" }, "uploads.max_mb": { value: 10, source: "default" } });
  const overridden = await authed(t.slug, t.token, "/api/settings", { method: "PATCH", body: { theme: "light", locale: "fr" } });
  expect(overridden.json.settings).toMatchObject({
    theme: { value: "light", source: "tenant" },
    locale: { value: "fr", source: "tenant" },
  });
  // Another tenant still inherits the default.
  expect((await authed(fleet[5].slug, fleet[5].token, "/api/settings")).json.settings.theme).toEqual({ value: "dark", source: "default" });
  // Removing the override falls back to the default; members cannot change settings.
  await authed(t.slug, t.token, "/api/settings", { method: "PATCH", body: { theme: null } });
  expect((await get()).theme).toEqual({ value: "dark", source: "default" });
  const member = await authed(t.slug, t.token, "/api/users", { method: "POST", body: { email: "s@x.test", password: "member password" } });
  expect(member.status).toBe(201);
  const { login } = await import("../helpers.mjs");
  const mt = await login(t.slug, "s@x.test", "member password");
  expect((await authed(t.slug, mt, "/api/settings", { method: "PATCH", body: { theme: "x" } })).status).toBe(403);
  expect((await authed(t.slug, t.token, "/api/settings", { method: "PATCH", body: { "Bad Key": 1 } })).status).toBe(422);
  await admin("PATCH", "/v1/settings", { theme: null, "uploads.max_mb": null });
  expect((await get()).theme).toBeUndefined();
});

test("maintenance, per tenant and fleet-wide: 503 with the message and Retry-After; the admin API keeps working", async () => {
  const t = fleet[6];
  const until = new Date(Date.now() + 120_000).toISOString();
  const on = await admin("PATCH", `/v1/tenants/${t.slug}`, { maintenance: { message: "moving to a bigger database", until } });
  expect(on.json.tenant.maintenance).toEqual({ message: "moving to a bigger database", until });
  let res = await authed(t.slug, t.token, "/api/projects");
  expect(res.status).toBe(503);
  expect(res.json.error.code).toBe("maintenance");
  expect(res.json.error.message).toContain("moving to a bigger database");
  expect(Number(res.headers["retry-after"])).toBeGreaterThan(60);
  expect((await authed(fleet[9].slug, fleet[9].token, "/api/projects")).status).toBe(200);
  expect((await admin("GET", `/v1/tenants/${t.slug}`)).status).toBe(200);
  expect((await admin("PATCH", `/v1/tenants/${t.slug}`, { maintenance: { message: "" } })).status).toBe(422);
  await admin("PATCH", `/v1/tenants/${t.slug}`, { maintenance: null });
  expect((await authed(t.slug, t.token, "/api/projects")).status).toBe(200);

  expect((await admin("PUT", "/v1/maintenance", { message: "platform upgrade" })).status).toBe(200);
  try {
    const { waitFor } = await import("../helpers.mjs");
    for (const x of [fleet[10], fleet[11]]) {
      await waitFor(async () => (await authed(x.slug, x.token, "/api/projects")).status === 503, "fleet maintenance (cache TTL 5 s)", 8000);
      res = await authed(x.slug, x.token, "/api/projects");
      expect(res.json.error).toEqual({ code: "maintenance", message: "platform upgrade" });
      expect(res.headers["retry-after"]).toBe("60");
    }
    expect((await admin("GET", "/v1/maintenance")).json.maintenance).toEqual({ message: "platform upgrade", until: null });
    expect((await admin("GET", "/v1/tenants?limit=1")).status).toBe(200);
  } finally {
    await admin("DELETE", "/v1/maintenance");
  }
  const { waitFor } = await import("../helpers.mjs");
  await waitFor(
    async () => (await authed(fleet[10].slug, fleet[10].token, "/api/projects")).status === 200,
    "the fleet maintenance to end",
    8000,
  );
});
