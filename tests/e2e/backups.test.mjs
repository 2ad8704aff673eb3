// Backups and restores: scheduled backups (verified, listed, downloadable, retried after
// faults), restore from a backup into a new database, undelete, point-in-time restore through
// Time Travel, and the tenant admins' export. Faults are injected into export, import, R2 and
// restore; the crash of a restore midway is in restore-crash.test.mjs (it kills its own stack).

import { createHash } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, describe, expect, test } from "vitest";
import { ADMIN_PASSWORD, admin, api, authed, createTenant, login, request, setFaults, sql, stack, waitFor } from "../helpers.mjs";

afterEach(() => setFaults([]));

/** Adds a project named `name` to the tenant. */
async function addProject(t, name) {
  const res = await authed(t.slug, t.token, "/api/projects", { method: "POST", body: { name } });
  expect(res.status, res.text).toBe(201);
}

/** The tenant's project names, sorted (signing in again with `password` if the token is refused). */
async function projects(t) {
  const res = await authed(t.slug, t.token, "/api/projects?limit=100");
  expect(res.status, res.text).toBe(200);
  return res.json.projects.map((p) => p.name).sort();
}

/**
 * Runs a backup pass on demand (of `slugs` only: the shared stack holds other files' tenants).
 * @param {string[]} slugs
 * @param {Record<string, unknown>} [body]
 */
const runBackups = (slugs, body = { max_age_seconds: 0 }) => admin("POST", "/v1/backups/run", { slugs, ...body });

/** Takes a manual backup of tenant `slug`; resolves with it. */
async function backupNow(slug) {
  const res = await admin("POST", `/v1/tenants/${slug}/backups`);
  expect(res.status, res.text).toBe(201);
  return res.json.backup;
}

/** Polls GET /v1/tenants/{slug} (which carries the operation on) until its latest operation is closed. */
async function restoreSettled(slug, timeoutMs = 60_000) {
  let last;
  await waitFor(
    async () => {
      last = await admin("GET", `/v1/tenants/${slug}`);
      const op = (await admin("GET", `/v1/tenants/${slug}/operations`)).json.operations[0];
      return last.status === 200 && op && !["pending", "running"].includes(op.state);
    },
    `the restore of ${slug} to finish`,
    timeoutMs,
  );
  return (await admin("GET", `/v1/tenants/${slug}/operations`)).json.operations[0];
}

describe("scheduled backups", () => {
  test("a pass backs every due tenant up, verified and listed; each downloads with its checksum", async () => {
    const a = await createTenant();
    const b = await createTenant();
    await addProject(a, "alpha");
    const before = new Date().toISOString();
    const res = await runBackups([a.slug, b.slug]);
    expect(res.status, res.text).toBe(200);
    expect(res.json.failed).toEqual([]);
    const done = res.json.backed_up.map((o) => o.slug);
    expect(done).toEqual(expect.arrayContaining([a.slug, b.slug]));
    expect(res.json.remaining).toBe(0);

    const listed = await admin("GET", `/v1/tenants/${a.slug}/backups`);
    expect(listed.status).toBe(200);
    const [backup] = listed.json.backups;
    expect(backup).toMatchObject({ kind: "scheduled", database_id: a.uuid, rows: { projects: 1, users: 1 } });
    expect(listed.json.scheduled.last_error).toBeNull();
    const file = await admin("GET", `/v1/tenants/${a.slug}/backups/${backup.id}`);
    expect(file.status).toBe(200);
    expect(createHash("sha256").update(file.text).digest("hex")).toBe(backup.sha256);
    expect(Buffer.byteLength(file.text)).toBe(backup.bytes);
    expect(file.text).toContain("alpha");

    // Backed up just now: not due again under the configured interval, nor in a run that began
    // before (a run's later passes end: what they backed up is not due again).
    const again = await runBackups([a.slug, b.slug], {});
    expect(again.json.backed_up.map((o) => o.slug)).not.toContain(a.slug);
    const sameRun = await runBackups([a.slug, b.slug], { before });
    expect(sameRun.json).toMatchObject({ backed_up: [], remaining: 0 });
  });

  test("faults in export and R2 are recorded on the tenant and retried by the next pass; nothing half-kept", async () => {
    const t = await createTenant();
    await setFaults([{ endpoint: "d1.export", kind: "error", status: 500 }]);
    const failed = await runBackups([t.slug]);
    expect(failed.status, failed.text).toBe(200);
    expect(failed.json.failed.map((o) => o.slug)).toContain(t.slug);
    const listed = (await admin("GET", `/v1/tenants/${t.slug}/backups`)).json;
    expect(listed.backups).toEqual([]);
    expect(listed.scheduled.last_error).toMatch(/export|500/i);

    await setFaults([{ endpoint: "r2.put", kind: "error" }]);
    const r2 = await runBackups([t.slug]);
    expect(r2.json.failed.map((o) => o.slug)).toContain(t.slug);
    expect((await admin("GET", `/v1/tenants/${t.slug}/backups`)).json.backups).toEqual([]);

    await setFaults([]);
    const ok = await runBackups([t.slug]);
    expect(ok.json.backed_up.map((o) => o.slug)).toEqual([t.slug]);
    expect(ok.json.failed.map((o) => o.slug)).not.toContain(t.slug);
    const after = (await admin("GET", `/v1/tenants/${t.slug}/backups`)).json;
    expect(after.backups).toHaveLength(1);
    expect(after.scheduled.last_error).toBeNull();
  });

  test("bad run bodies are 422; an unknown backup is 404", async () => {
    expect((await runBackups([], { limit: -1 })).status).toBe(422);
    expect((await runBackups([], { concurrency: 99 })).status).toBe(422);
    expect((await runBackups([], { nope: 1 })).status).toBe(422);
    expect((await runBackups([], { before: "soon" })).status).toBe(422);
    expect((await runBackups([], { before: new Date().toISOString(), max_age_seconds: 1 })).status).toBe(422);
    expect((await runBackups(["Not A Slug"])).status).toBe(422);
    expect((await admin("POST", "/v1/backups/run", { slugs: "x" })).status).toBe(422);
    const t = await createTenant();
    expect((await admin("GET", `/v1/tenants/${t.slug}/backups/999999`)).status).toBe(404);
    expect((await admin("GET", `/v1/tenants/${t.slug}/backups/x`)).status).toBe(404);
  });
});

describe("restore from a backup", () => {
  test("the tenant gets the backup's data in a new database; old sessions sign in again; the old database is kept until confirmed", async () => {
    const t = await createTenant();
    await addProject(t, "before");
    const backup = await backupNow(t.slug);
    await addProject(t, "after");
    expect(await projects(t)).toEqual(["after", "before"]);

    const started = await admin("POST", `/v1/tenants/${t.slug}/restore`, { backup: backup.id });
    expect([200, 202], started.text).toContain(started.status);
    expect(started.json.operation.kind).toBe("restore_backup");
    // While it runs the tenant answers 503 with Retry-After (or it finished already).
    const during = await request(`${t.slug}.localhost`, "/api/tenant");
    if (during.status === 503) {
      expect(during.json.error.code).toBe("tenant_restoring");
      expect(Number(during.headers["retry-after"])).toBeGreaterThan(0);
    }
    const op = await restoreSettled(t.slug);
    expect(op.state, op.last_error).toBe("succeeded");
    expect(op.steps_done).toEqual(["database", "import", "check_import", "quiesce", "switch", "verify"]);

    const tenant = (await admin("GET", `/v1/tenants/${t.slug}`)).json.tenant;
    expect(tenant.database.id).not.toBe(t.uuid);
    expect(tenant.restoring).toBe(false);
    // The old token named the old database.
    await waitFor(async () => (await authed(t.slug, t.token, "/api/me")).status === 401, "the old token to be refused");
    const fresh = { ...t, token: await login(t.slug, t.email) };
    expect(await projects(fresh)).toEqual(["before"]);

    const listed = (await admin("GET", `/v1/tenants/${t.slug}/backups`)).json;
    expect(listed.spare_databases).toEqual([expect.objectContaining({ id: t.uuid, role: "replaced" })]);
    // The old database is untouched until the operator confirms.
    expect((await sql(t.uuid, "SELECT name FROM projects ORDER BY name"))[0].results.map((r) => r.name)).toEqual(["after", "before"]);
    const confirmed = await admin("POST", `/v1/tenants/${t.slug}/restore/confirm`);
    expect(confirmed.status, confirmed.text).toBe(200);
    expect(confirmed.json.dropped).toHaveLength(1);
    const databases = (await admin("GET", `/v1/tenants/${t.slug}/backups`)).json.spare_databases;
    expect(databases).toEqual([]);
  });

  test("import faults are retried to the same end; a backup that fails its check leaves the tenant on its old data", async () => {
    const t = await createTenant();
    await addProject(t, "kept");
    const backup = await backupNow(t.slug);
    // While the import keeps failing, the tenant is served its old data (no downtime before the
    // import is checked).
    await setFaults([
      { endpoint: "d1.import", kind: "error", status: 502 },
      { endpoint: "d1.create", kind: "rate_limit", retry_after: 1, times: 1 },
    ]);
    const pending = await admin("POST", `/v1/tenants/${t.slug}/restore`, { backup: backup.id });
    expect(pending.status, pending.text).toBe(202);
    expect(await projects(t)).toEqual(["kept"]);
    expect((await admin("GET", `/v1/tenants/${t.slug}`)).json.tenant.restoring).toBe(false);
    await setFaults([
      { endpoint: "d1.import", kind: "error", status: 502, times: 6 },
      { endpoint: "d1.import", kind: "lose_response", times: 1 },
    ]);
    await admin("GET", `/v1/tenants/${t.slug}`);
    await setFaults([]);
    const op = await restoreSettled(t.slug, 90_000);
    expect(op.state, op.last_error).toBe("succeeded");
    const fresh = { ...t, token: await login(t.slug, t.email) };
    expect(await projects(fresh)).toEqual(["kept"]);

    // A backup whose recorded row counts do not match what imports (damaged): the restore fails at
    // its check, before the switch, and the tenant is served from its current database again.
    const second = await backupNow(t.slug);
    const current = (await admin("GET", `/v1/tenants/${t.slug}`)).json.tenant.database.id;
    const controlDb = (await admin("GET", "/healthz")).json; // the control plane is reachable
    expect(controlDb.status).toBe("ok");
    await tamperBackupRows(t.slug, second.id);
    const bad = await admin("POST", `/v1/tenants/${t.slug}/restore`, { backup: second.id });
    expect([200, 202]).toContain(bad.status);
    const failed = await restoreSettled(t.slug);
    expect(failed.state).toBe("failed");
    expect(failed.last_error).toMatch(/rows/);
    const now = (await admin("GET", `/v1/tenants/${t.slug}`)).json.tenant;
    expect(now.database.id).toBe(current);
    expect(now.restoring).toBe(false);
    expect(await projects(fresh)).toEqual(["kept"]);
    // Its unswitched database is dropped by the next sweep.
    await admin("POST", "/v1/reconcile");
    const spares = (await admin("GET", `/v1/tenants/${t.slug}/backups`)).json.spare_databases;
    expect(spares.map((d) => d.role)).toEqual(["replaced"]); // the first restore's, kept until confirmed
  });

  test("bad restore bodies are 422; of a burst of restores one opens, the others are 409", async () => {
    const t = await createTenant();
    for (const body of [{}, { at: "yesterday" }, { backup: "1" }, { backup: 1, at: "2026-01-01T00:00:00Z" }, { when: 1 }]) {
      const res = await admin("POST", `/v1/tenants/${t.slug}/restore`, body);
      expect(res.status, JSON.stringify(body)).toBe(422);
    }
    expect((await admin("POST", `/v1/tenants/${t.slug}/restore`, { backup: 424242 })).status).toBe(404);
    const backup = await backupNow(t.slug);
    // A burst of 30 restores, from a backup and to a point in time: exactly one opens.
    const at = new Date().toISOString();
    const answers = await Promise.all(
      Array.from({ length: 30 }, (_, i) => admin("POST", `/v1/tenants/${t.slug}/restore`, i % 2 ? { backup: backup.id } : { at })),
    );
    const statuses = answers.map((a) => a.status);
    expect(statuses.filter((s) => s === 409)).toHaveLength(29);
    expect((await restoreSettled(t.slug)).state).toBe("succeeded");
    const ops = (await admin("GET", `/v1/tenants/${t.slug}/operations`)).json.operations;
    expect(ops.filter((o) => o.kind.startsWith("restore"))).toHaveLength(1);
  });
});

/** Edits the recorded row counts of backup `id` behind the API's back (a damaged backup). */
async function tamperBackupRows(slug, id) {
  await api("POST", `/d1/database/${stack.controlDatabaseId}/query`, {
    sql: "UPDATE backups SET row_counts = json_set(row_counts, '$.projects', 99) WHERE tenant_slug = ?1 AND id = ?2",
    params: [slug, id],
  });
}

describe("undelete", () => {
  test("a deleted tenant comes back from its backup under its slug, with its users and data; old tokens are refused", async () => {
    const t = await createTenant();
    await addProject(t, "precious");
    const deleted = await admin("DELETE", `/v1/tenants/${t.slug}`);
    expect([200, 202]).toContain(deleted.status);
    await waitFor(async () => (await admin("GET", `/v1/tenants/${t.slug}`)).json.tenant.status === "deleted", "the delete");

    const res = await admin("POST", `/v1/tenants/${t.slug}/restore`, {});
    expect([200, 202], res.text).toContain(res.status);
    expect(res.json.operation.kind).toBe("undelete");
    await waitFor(async () => (await admin("GET", `/v1/tenants/${t.slug}`)).json.tenant.status === "active", "the undelete", 60_000);
    await waitFor(
      async () =>
        (await request(`${t.slug}.localhost`, "/api/auth/login", { method: "POST", body: { email: t.email, password: ADMIN_PASSWORD } }))
          .status === 200,
      "the undeleted tenant to serve",
    );
    const fresh = { ...t, token: await login(t.slug, t.email) };
    expect(await projects(fresh)).toEqual(["precious"]);
    const old = await authed(t.slug, t.token, "/api/me");
    expect(old.status).toBe(401);
    // Undelete only on a deleted tenant with a backup; a live one needs `at` or `backup`.
    expect((await admin("POST", `/v1/tenants/${t.slug}/restore`, {})).status).toBe(422);
  });
});

describe("point-in-time restore", () => {
  test("restores the data as it was at the time; 503 tenant_restoring while it runs; sessions stay", async () => {
    const t = await createTenant();
    await addProject(t, "early");
    await sleep(1_500);
    const at = new Date().toISOString();
    await sleep(1_500);
    await addProject(t, "late");
    expect(await projects(t)).toEqual(["early", "late"]);

    const res = await admin("POST", `/v1/tenants/${t.slug}/restore`, { at });
    expect([200, 202], res.text).toContain(res.status);
    expect(res.json.operation.kind).toBe("restore_point_in_time");
    const op = await restoreSettled(t.slug);
    expect(op.state, op.last_error).toBe("succeeded");
    await waitFor(async () => (await authed(t.slug, t.token, "/api/projects")).status === 200, "the tenant to serve again");
    expect(await projects(t)).toEqual(["early"]);
    const tenant = (await admin("GET", `/v1/tenants/${t.slug}`)).json.tenant;
    expect(tenant.database.id).toBe(t.uuid);
  });

  test("faults on the bookmark and restore calls are retried; a time before the database existed fails cleanly", async () => {
    const t = await createTenant();
    await addProject(t, "one");
    await sleep(1_200);
    const at = new Date().toISOString();
    await sleep(800);
    await addProject(t, "two");
    await setFaults([
      { endpoint: "d1.time_travel.bookmark", kind: "error", status: 500, times: 2 },
      { endpoint: "d1.time_travel.restore", kind: "lose_response", times: 1 },
    ]);
    await admin("POST", `/v1/tenants/${t.slug}/restore`, { at });
    const op = await restoreSettled(t.slug);
    await setFaults([]);
    expect(op.state, op.last_error).toBe("succeeded");
    await waitFor(async () => (await authed(t.slug, t.token, "/api/projects")).status === 200, "the tenant to serve again");
    expect(await projects(t)).toEqual(["one"]);

    const before = await admin("POST", `/v1/tenants/${t.slug}/restore`, { at: "2001-01-01T00:00:00Z" });
    expect([200, 202]).toContain(before.status);
    const failed = await restoreSettled(t.slug);
    expect(failed.state).toBe("failed");
    await waitFor(async () => (await authed(t.slug, t.token, "/api/projects")).status === 200, "the tenant to serve again");
    expect(await projects(t)).toEqual(["one"]);
  });
});

describe("export", () => {
  test("a tenant admin downloads the whole database as SQL, audited; members cannot", async () => {
    const t = await createTenant();
    await addProject(t, "exported-project");
    const res = await authed(t.slug, t.token, "/api/export");
    expect(res.status, res.text).toBe(200);
    expect(res.headers["content-type"]).toBe("application/sql");
    expect(res.headers["content-disposition"]).toContain(`${t.slug}.sql`);
    expect(res.text).toContain("exported-project");
    expect(res.text).toMatch(/CREATE TABLE/);
    const audit = await authed(t.slug, t.token, "/api/audit-log");
    expect(audit.json.entries.map((e) => e.action)).toContain("tenant.export");

    const member = await authed(t.slug, t.token, "/api/users", {
      method: "POST",
      body: { email: `m@${t.slug}.test`, password: ADMIN_PASSWORD, role: "member" },
    });
    expect(member.status, member.text).toBe(201);
    const memberToken = await login(t.slug, `m@${t.slug}.test`);
    expect((await authed(t.slug, memberToken, "/api/export")).status).toBe(403);
    expect((await authed(t.slug, t.token, "/api/export", { method: "POST" })).status).toBe(405);
  });
});
