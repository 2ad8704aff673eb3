// Fleet operations with 50 tenants: a migration shipped while tenants are at the old version
// reaches all of them; one that fails on some leaves those at the old version with the error
// recorded and the rest migrated; running again after the fix completes.

import { spawnSync } from "node:child_process";
import path from "node:path";
import { beforeAll, expect, test } from "vitest";
import { ROOT } from "../../cloud/stack.mjs";
import { tenantMigrations } from "../../cloud/provision.mjs";
import { admin, authed, createTenant, freshSlug, setBindings, sql, stack } from "../helpers.mjs";

const FLEET = 50;
const LATEST = tenantMigrations().length;
const NEWEST = tenantMigrations().at(-1).name;
let fleet;

beforeAll(async () => {
  const tag = freshSlug("fleet");
  fleet = [];
  for (let i = 0; i < FLEET; i += 10) {
    fleet.push(...(await Promise.all(Array.from({ length: Math.min(10, FLEET - i) }, (_, j) => createTenant(`${tag}-${i + j}`)))));
  }
}, 300_000);

/** Puts a tenant back at the version before the newest migration, as if that had just shipped. */
async function rollBack(t) {
  await sql(t.uuid, `DROP TABLE IF EXISTS roles; DROP TABLE IF EXISTS settings; DELETE FROM d1_migrations WHERE name = '${NEWEST}'`);
  await sql(stack.controlDatabaseId, "UPDATE tenants SET schema_version = ?1 WHERE slug = ?2", [LATEST - 1, t.slug]);
}

/** A new Worker version starts fresh isolates (this is what a deploy does). */
const redeploy = () => setBindings((bindings) => bindings);

const migrateCli = () =>
  spawnSync(process.execPath, [path.join(ROOT, "scripts", "migrate.mjs"), "--url", stack.url, "--token", stack.adminToken, "--limit", "20"], { encoding: "utf8" });

const ledger = async (t) => (await sql(t.uuid, "SELECT name FROM d1_migrations ORDER BY id"))[0].results.map((r) => r.name);

test("a migration reaches every tenant; failures are isolated, recorded, and fixed by running again", { timeout: 300_000 }, async () => {
  expect(fleet).toHaveLength(FLEET);
  await Promise.all(fleet.map(rollBack));
  // Five tenants hold a table that makes the new migration fail there.
  const broken = fleet.slice(0, 5);
  for (const t of broken) await sql(t.uuid, "CREATE TABLE settings (conflicting INTEGER)");
  await redeploy();

  const before = await admin("GET", "/v1/migrations/status");
  expect(before.json.latest).toBe(LATEST);
  expect(before.json.behind).toBeGreaterThanOrEqual(FLEET);

  const run = migrateCli();
  console.log(run.stdout.split("\n").filter((l) => !l.startsWith("  ✓")).join("\n"));
  expect(run.status).toBe(1);
  expect(run.stdout).toMatch(/migrated, 5 failed/);
  expect(run.stdout.match(/ ✓ /g)?.length).toBeGreaterThanOrEqual(FLEET - 5);

  const after = await admin("GET", "/v1/migrations/status");
  const failedSlugs = after.json.failures.map((f) => f.slug).sort();
  expect(failedSlugs).toEqual(broken.map((t) => t.slug).sort());
  for (const f of after.json.failures) {
    expect(f.schema_version).toBe(LATEST - 1);
    expect(f.migration_error).toMatch(new RegExp(`${NEWEST}.*settings`));
  }
  // Atomic: a failed tenant has none of the migration (no roles table), and is not served.
  for (const t of broken) {
    expect(await ledger(t)).not.toContain(NEWEST);
    expect((await sql(t.uuid, "SELECT count(*) AS n FROM sqlite_master WHERE name = 'roles'"))[0].results[0].n).toBe(0);
    const res = await authed(t.slug, t.token, "/api/projects");
    expect([res.status, res.json.error.code]).toEqual([503, "tenant_migrating"]);
  }
  for (const t of fleet.slice(5)) expect(await ledger(t)).toContain(NEWEST);
  expect((await authed(fleet[10].slug, fleet[10].token, "/api/projects")).status).toBe(200);

  // The fix, then the same command again.
  for (const t of broken) await sql(t.uuid, "DROP TABLE settings");
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
  const res = await authed(t.slug, t.token, "/api/projects");
  expect(res.status, res.text).toBe(200);
  expect(await ledger(t)).toContain(NEWEST);
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
