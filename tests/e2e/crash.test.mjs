// Crashes: the Worker (workerd) is killed with SIGKILL in the middle of bursts of creates and
// deletes, the stack is started again on the same state, and only the reconciler runs (no client
// re-sends, no GET of a tenant, which would carry its operation on). Every tenant must reach a
// terminal state with nothing left behind: no open operation, no orphan database, every bound
// tenant bound exactly once and serving.
//
// This file runs its own stack (the shared one must not be killed under the other tests).

import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { adminClient, hostRequest } from "../../cloud/client.mjs";
import { tenantBindings as tenantBindingsOf } from "../../cloud/provision.mjs";
import { startStack } from "../../cloud/stack.mjs";

const PASSWORD = "a long enough password";
/** @type {string} */
let stateDir;
/** @type {Awaited<ReturnType<typeof startStack>>} */
let stack;

beforeAll(async () => {
  stateDir = await mkdtemp(path.join(os.tmpdir(), "tenantry-crash-"));
  stack = await startStack({ stateDir });
}, 120_000);

afterAll(async () => {
  await stack?.stop();
  await rm(stateDir, { recursive: true, force: true });
});

const admin = () => adminClient(stack.url, stack.adminToken);

/** @type {import("../helpers.mjs").CloudApi} the current stack's local cloud (a new one after each restart) */
const cloud = (method, route, body, opts) => stack.api(method, route, body, opts);

/**
 * `hostRequest` to the current stack's Worker as if to `host`.
 * @param {string} host
 * @param {string} pathname
 * @param {import("../helpers.mjs").RequestOptions} [opts]
 */
const request = (host, pathname, opts) => hostRequest(Number(new URL(stack.url).port), host, pathname, opts);

/** Rows of `statement` on the control plane, read through the local cloud (not the Worker). */
async function control(statement, params = []) {
  const out = await cloud("POST", `/d1/database/${stack.controlDatabase.uuid}/query`, { sql: statement, params });
  return out.result[0].results;
}

/** Kills workerd mid-flight, then starts the stack again on the same state; returns the restart time. */
async function crashAndRestart() {
  await stack.crash();
  const started = Date.now();
  stack = await startStack({ stateDir });
  return Date.now() - started;
}

/** Runs the reconciler (the admin API's run-now of the cron pass) until `done()`, at most `passes` times. */
async function reconcileUntil(done, passes = 8) {
  const reports = [];
  for (let i = 0; i < passes && !(await done()); i++) {
    const res = await admin()("POST", "/v1/reconcile");
    expect(res.status, res.text).toBe(200);
    reports.push(res.json);
  }
  return reports;
}

/** The invariants every converged fleet must hold, checked from the control plane and the cloud. */
async function expectConverged(slugs) {
  const open = await control("SELECT tenant_slug, kind FROM operations WHERE state IN ('pending', 'running')");
  expect(open).toEqual([]);
  const rows = await control(
    `SELECT slug, status, bind_wanted, database_id, database_name, binding_name FROM tenants WHERE slug IN (${slugs.map(() => "?").join(",")})`,
    slugs,
  );
  for (const row of rows) expect(["active", "deleted"], `${row.slug} is ${row.status}`).toContain(row.status);

  const settings = await tenantBindingsOf(cloud);
  const databases = (await cloud("GET", "/d1/database?per_page=10000")).result;
  const owned = new Set((await control("SELECT database_name FROM tenants WHERE status != 'deleted'")).map((r) => r.database_name));
  const orphans = databases.filter((d) => d.name.startsWith("tenantry-") && d.name !== "tenantry-control" && !owned.has(d.name));
  expect(orphans.map((d) => d.name)).toEqual([]);
  for (const row of rows) {
    const bound = settings.filter((b) => b.name === row.binding_name);
    if (row.status === "active") {
      expect(row.bind_wanted).toBe(1);
      expect(
        bound.map((b) => b.id),
        `${row.slug} bound exactly once, to its database`,
      ).toEqual([row.database_id]);
      expect(databases.some((d) => d.uuid === row.database_id)).toBe(true);
    } else {
      expect(bound, `${row.slug} is deleted but still bound`).toEqual([]);
      expect(
        databases.some((d) => d.name === row.database_name),
        `${row.slug}'s database outlived it`,
      ).toBe(false);
    }
  }
  return rows;
}

/** Fires `count` creates at once without waiting; resolves with their outcomes (some cut by the crash). */
function fireCreates(prefix, count) {
  const slugs = Array.from({ length: count }, (_, i) => `${prefix}-${i}`);
  const client = admin();
  const outcomes = Promise.all(
    slugs.map((slug) =>
      client("POST", "/v1/tenants", { slug, name: `Crash ${slug}`, admin: { email: `a@${slug}.test`, password: PASSWORD } })
        .then((r) => ({ slug, status: r.status }))
        .catch(() => ({ slug, status: 0 })),
    ),
  );
  return { slugs, outcomes };
}

async function allSettled(slugs, want) {
  const rows = await control(`SELECT status FROM tenants WHERE slug IN (${slugs.map(() => "?").join(",")})`, slugs);
  const open = await control("SELECT count(*) AS n FROM operations WHERE state IN ('pending', 'running')");
  return open[0].n === 0 && rows.every((r) => want.includes(r.status));
}

describe("a crash during a burst of creates", () => {
  for (const killAfterMs of [400, 1500]) {
    test(`killed ${killAfterMs} ms in: the reconciler alone makes every created tenant active, nothing left behind`, async () => {
      const { slugs, outcomes } = fireCreates(`crash-c${killAfterMs}`, 16);
      await sleep(killAfterMs);
      const restartMs = await crashAndRestart();
      const acknowledged = (await outcomes).filter((o) => [201, 202].includes(o.status)).map((o) => o.slug);

      const reports = await reconcileUntil(() => allSettled(slugs, ["active", "failed"]));
      // The first pass after the restart already runs every operation: the leases of the dead
      // runners lapse within seconds, so none is skipped as busy (a create then needs one more
      // pass, from an invocation that sees its new binding).
      if (reports.length > 0) {
        const busy = reports[0].operations.unfinished.filter((u) => u.reason === "busy");
        expect(busy, `first pass after a restart of ${restartMs} ms`).toEqual([]);
      }
      expect(reports.length, "passes to converge").toBeLessThanOrEqual(4);

      const rows = await expectConverged(slugs);
      // Every create that was acknowledged exists; none ended failed (no fault was injected).
      for (const slug of acknowledged) expect(rows.map((r) => r.slug)).toContain(slug);
      expect(rows.filter((r) => r.status !== "active")).toEqual([]);
      // And serves.
      for (const row of rows) {
        const res = await request(`${row.slug}.localhost`, "/api/auth/login", {
          method: "POST",
          body: { email: `a@${row.slug}.test`, password: PASSWORD },
        });
        expect(res.status, `${row.slug}: ${res.text}`).toBe(200);
      }
    }, 240_000);
  }
});

describe("a crash during a burst of deletes", () => {
  test("killed mid-way: the reconciler alone deletes every tenant, backs it up, and leaves no database or binding", async () => {
    const { slugs, outcomes } = fireCreates("crash-d", 8);
    await outcomes;
    await reconcileUntil(() => allSettled(slugs, ["active"]));
    expect(await allSettled(slugs, ["active"])).toBe(true);

    const client = admin();
    const deletes = Promise.all(slugs.map((slug) => client("DELETE", `/v1/tenants/${slug}`).catch(() => ({ status: 0 }))));
    await sleep(500);
    await crashAndRestart();
    await deletes;
    // Deletes that never reached the Worker leave their tenant active: send them again (a client
    // that got no answer does), then only the reconciler.
    for (const row of await control(`SELECT slug FROM tenants WHERE status = 'active' AND slug LIKE 'crash-d-%'`)) {
      await client("DELETE", `/v1/tenants/${row.slug}`).catch(() => undefined);
    }
    const reports = await reconcileUntil(() => allSettled(slugs, ["deleted"]));
    expect(reports.length).toBeLessThan(8);
    const rows = await expectConverged(slugs);
    expect(rows.map((r) => r.status)).toEqual(slugs.map(() => "deleted"));
    const backups = await control(`SELECT slug, backup_location FROM tenants WHERE slug LIKE 'crash-d-%' AND backup_location IS NULL`);
    expect(backups).toEqual([]);
  }, 240_000);
});
