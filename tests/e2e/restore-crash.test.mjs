// Crashes in the middle of restores: workerd is killed with SIGKILL while a restore runs, the
// stack is started again on the same state, and only the reconciler carries the restore on. Each
// must end correct: the operation succeeded, the tenant serving the restored data and not
// restoring, no restore database left behind (only the replaced one, kept until confirmed).
//
// This file runs its own stack (the shared one must not be killed under the other tests).

import { setTimeout as sleep } from "node:timers/promises";
import { describe, expect, test, vi } from "vitest";
import { hostRequest } from "../../cloud/client.mjs";
import { ownStack } from "../own-stack.mjs";

const own = ownStack("restore-crash");
const admin = () => own.admin;
const request = (host, pathname, opts) => hostRequest(own.port, host, pathname, opts);

/** Rows of `statement` on the control plane, read through the local cloud (not the Worker). */
async function control(statement, params = []) {
  const out = await own.stack.api("POST", `/d1/database/${own.stack.controlDatabase.uuid}/query`, { sql: statement, params });
  return out.result[0].results;
}

/** A tenant, active and signed in, with projects `names`. */
async function tenantWith(slug, names) {
  await own.createTenant(slug);
  await own.serving(slug);
  const token = (await own.login(slug)).json.token;
  for (const name of names) await addProject(slug, token, name);
  return { slug, token };
}

async function addProject(slug, token, name) {
  const r = await request(`${slug}.localhost`, "/api/projects", {
    method: "POST",
    headers: { authorization: `Bearer ${token}` },
    body: { name },
  });
  expect(r.status, r.text).toBe(201);
}

/** The tenant's projects, read by signing in again (a restore from a backup ends old sessions). */
async function projectsOf(slug) {
  return vi.waitFor(
    async () => {
      const login = await own.login(slug);
      if (login.status !== 200) throw new Error(`${slug} not serving: ${login.status} ${login.text}`);
      const r = await request(`${slug}.localhost`, "/api/projects?limit=100", { headers: { authorization: `Bearer ${login.json.token}` } });
      if (r.status !== 200) throw new Error(`${slug} projects: ${r.status}`);
      return r.json.projects.map((p) => p.name).sort();
    },
    { timeout: 30_000, interval: 200 },
  );
}

/** Runs the reconciler until the tenant has no open operation; returns its last operation. */
async function reconcileUntilClosed(slug) {
  for (let i = 0; i < 8; i++) {
    const open = await control("SELECT id FROM operations WHERE tenant_slug = ? AND state IN ('pending', 'running')", [slug]);
    if (open.length === 0) break;
    const res = await admin()("POST", "/v1/reconcile");
    expect(res.status, res.text).toBe(200);
  }
  const [op] = await control(
    "SELECT kind, state, last_error, steps FROM operations WHERE tenant_slug = ? ORDER BY created_at DESC LIMIT 1",
    [slug],
  );
  return op;
}

/** Nothing half-done is left: not restoring, no restore database (only replaced ones). */
async function expectClean(slug) {
  const [row] = await control("SELECT status, restoring, database_id, database_name FROM tenants WHERE slug = ?", [slug]);
  expect(row).toMatchObject({ status: "active", restoring: null });
  const spares = await control("SELECT role FROM spare_databases WHERE tenant_slug = ?", [slug]);
  expect(spares.filter((s) => s.role === "restore")).toEqual([]);
  const databases = (await own.stack.api("GET", "/d1/database?per_page=10000")).result.filter((d) => d.name.startsWith(`tenantry-${slug}`));
  // The tenant's database, and at most the one it replaced.
  expect(databases.map((d) => d.uuid)).toContain(row.database_id);
  expect(databases.length).toBeLessThanOrEqual(1 + spares.length);
}

describe("a crash in the middle of a restore", () => {
  test("from a backup, killed during its import: the reconciler finishes it on the backup's data", async () => {
    const t = await tenantWith("rc-backup", ["in-backup"]);
    const backup = await admin()("POST", `/v1/tenants/${t.slug}/backups`);
    expect(backup.status, backup.text).toBe(201);
    await addProject(t.slug, t.token, "after-backup");
    const started = admin()("POST", `/v1/tenants/${t.slug}/restore`, { backup: backup.json.backup.id }).catch(() => undefined);
    await sleep(900);
    await own.crashAndRestart();
    await started;
    const op = await reconcileUntilClosed(t.slug);
    expect(op, op?.last_error).toMatchObject({ kind: "restore_backup", state: "succeeded" });
    await expectClean(t.slug);
    expect(await projectsOf(t.slug)).toEqual(["in-backup"]);
  }, 180_000);

  test("point in time, killed around its Time Travel step: the reconciler finishes it at the asked time", async () => {
    const t = await tenantWith("rc-pitr", ["early"]);
    await sleep(1_500);
    const at = new Date().toISOString();
    await sleep(1_000);
    await addProject(t.slug, t.token, "late");
    const started = admin()("POST", `/v1/tenants/${t.slug}/restore`, { at }).catch(() => undefined);
    // The quiesce wait is 11 s: the kill lands as the restore itself runs.
    await sleep(11_200);
    await own.crashAndRestart();
    await started;
    const op = await reconcileUntilClosed(t.slug);
    expect(op, op?.last_error).toMatchObject({ kind: "restore_point_in_time", state: "succeeded" });
    await expectClean(t.slug);
    expect(await projectsOf(t.slug)).toEqual(["early"]);
  }, 180_000);

  test("undelete, killed midway: the reconciler brings the tenant back with its data", async () => {
    const t = await tenantWith("rc-undelete", ["kept"]);
    await admin()("DELETE", `/v1/tenants/${t.slug}`);
    await vi.waitFor(
      async () => {
        const r = await admin()("GET", `/v1/tenants/${t.slug}`);
        if (r.json.tenant.status !== "deleted") throw new Error(r.json.tenant.status);
      },
      { timeout: 30_000, interval: 200 },
    );
    const started = admin()("POST", `/v1/tenants/${t.slug}/restore`, {}).catch(() => undefined);
    await sleep(700);
    await own.crashAndRestart();
    await started;
    const op = await reconcileUntilClosed(t.slug);
    expect(op, op?.last_error).toMatchObject({ kind: "undelete", state: "succeeded" });
    await expectClean(t.slug);
    expect(await projectsOf(t.slug)).toEqual(["kept"]);
  }, 180_000);
});
