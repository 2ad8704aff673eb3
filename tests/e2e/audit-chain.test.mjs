// The tenant audit log's hash chain, end to end: rows written by a burst of concurrent requests are
// sealed in the background and chained in id order; the tenant admin's and the operator's
// verification find a row edited or deleted behind the API's back (SQL run directly on the
// tenant's D1 through the local cloud) at that row; the operator's anchor catches a log rewritten
// with every later hash recomputed, and says so plainly after a point-in-time restore.

import { setTimeout as sleep } from "node:timers/promises";
import { describe, expect, test } from "vitest";
import { ADMIN_PASSWORD, admin, authed, createTenant, freshSlug, login, request, sql, waitFor } from "../helpers.mjs";

/**
 * @typedef {{ slug: string, uuid: string, email: string, token: string }} Tenant
 * @typedef {{ status: number, text: string, json: any }} Res
 */

/**
 * The rows of one query on tenant database `uuid`.
 * @param {string} uuid
 * @param {string} statement
 * @param {unknown[]} [params]
 * @returns {Promise<any[]>}
 */
const rows = async (uuid, statement, params) => (await sql(uuid, statement, params))[0].results;

/** @param {Tenant} t */
const unsealed = async (t) => (await rows(t.uuid, "SELECT count(*) AS n FROM audit_log WHERE hash IS NULL"))[0].n;

/**
 * Waits until every audit row of `t` is sealed (the background sealing after each write).
 * @param {Tenant} t
 */
const sealed = (t) => waitFor(async () => (await unsealed(t)) === 0, `every audit row of ${t.slug} to be sealed`);

/**
 * The tenant admin's verification (`query`: e.g. "?limit=5").
 * @param {Tenant} t
 */
const tenantVerify = (t, query = "") => authed(t.slug, t.token, `/api/audit-log/verify${query}`);

/**
 * The operator's verification.
 * @param {Tenant} t
 */
const operatorVerify = (t, query = "") => admin("GET", `/v1/tenants/${t.slug}/audit/verify${query}`);

/**
 * Creates `n` projects through the API, one after another.
 * @param {Tenant} t
 */
async function addProjects(t, n, prefix = "p") {
  for (let i = 0; i < n; i++) {
    const res = await authed(t.slug, t.token, "/api/projects", { method: "POST", body: { name: `${prefix}${i}` } });
    expect(res.status, res.text).toBe(201);
  }
}

/**
 * The id of the audit row of the project created with `name`.
 * @param {Tenant} t
 * @param {string} name
 */
const auditIdOf = async (t, name) =>
  (await rows(t.uuid, "SELECT id FROM audit_log WHERE action = 'project.create' AND target = ?1", [`project:${name}`]))[0].id;

describe("sealing", () => {
  test("a burst of 50 concurrent audited writes (and verifications): every row sealed, chained in id order; verify says ok", async () => {
    const t = await createTenant(freshSlug("ac-burst"), { plan: "pro" });
    // Warm keep-alive connections so the burst overlaps (as in concurrency-tenant.test.mjs).
    await Promise.all(Array.from({ length: 60 }, () => request("localhost", "/healthz")));
    // 50 writes, and 10 verifications among them (each seals before it verifies, so sealing
    // passes overlap each other and the inserts).
    /** @type {Res[]} */
    const responses = await Promise.all(
      Array.from({ length: 60 }, (_, i) => {
        if (i % 6 === 5) return i % 12 === 5 ? tenantVerify(t) : operatorVerify(t);
        if (i % 10 === 0)
          return authed(t.slug, t.token, "/api/users", { method: "POST", body: { email: `u${i}@x.test`, password: ADMIN_PASSWORD } });
        return authed(t.slug, t.token, "/api/projects", { method: "POST", body: { name: `burst ${i}` } });
      }),
    );
    const writes = responses.filter((_, i) => i % 6 !== 5);
    const verifications = responses.filter((_, i) => i % 6 === 5);
    expect(writes.map((r) => r.status)).toEqual(Array(50).fill(201));
    // Verifying while rows are written and sealed never reports a false break.
    expect(verifications.map((r) => [r.status, r.json.ok, r.json.first_broken])).toEqual(Array(10).fill([200, true, null]));

    // Sealed without anyone asking (no verification yet).
    await sealed(t);
    const log = await rows(t.uuid, "SELECT id, prev_hash, hash FROM audit_log ORDER BY id");
    expect(log.length).toBeGreaterThanOrEqual(51); // the admin's sign-in and the 50 writes
    log.forEach((row, i) => {
      expect(row.id).toBe(i + 1);
      expect(row.hash).toMatch(/^[0-9a-f]{64}$/);
      if (i > 0) expect(row.prev_hash).toBe(log[i - 1].hash);
    });

    // The listing shows each entry's hash (a client may keep the newest to check against later).
    const newest = await authed(t.slug, t.token, "/api/audit-log?limit=1");
    expect(newest.json.entries[0]).toMatchObject({ id: log.length, hash: log[log.length - 1].hash });

    const verified = await tenantVerify(t);
    expect(verified.status, verified.text).toBe(200);
    expect(verified.json).toMatchObject({
      ok: true,
      checked: log.length,
      sealed_through: log.length,
      unsealed: 0,
      first_broken: null,
      next_cursor: null,
    });
    expect(verified.json.anchor.status).toBe("held"); // the operator's verifications in the burst anchored
    const operator = await operatorVerify(t);
    expect(operator.status, operator.text).toBe(200);
    expect(operator.json).toMatchObject({ ok: true, tenant: t.slug, checked: log.length, sealed_through: log.length });
    // The operator's verification anchors the head it found whole.
    expect(operator.json.anchored).toEqual({ last_id: log.length, hash: log[log.length - 1].hash });
  });

  test("verification pages continue from their cursor", async () => {
    const t = await createTenant(freshSlug("ac-page"), { plan: "pro" });
    await addProjects(t, 11);
    const total = (await rows(t.uuid, "SELECT count(*) AS n FROM audit_log"))[0].n;
    let checked = 0;
    let pages = 0;
    /** @type {number | null} */
    let cursor = null;
    do {
      const page = await tenantVerify(t, `?limit=5${cursor ? `&cursor=${cursor}` : ""}`);
      expect(page.status, page.text).toBe(200);
      expect(page.json.ok).toBe(true);
      checked += page.json.checked;
      cursor = page.json.next_cursor;
      pages++;
    } while (cursor);
    expect(checked).toBe(total);
    expect(pages).toBe(Math.ceil(total / 5));
    expect((await tenantVerify(t, "?limit=0")).status).toBe(400);
    expect((await tenantVerify(t, "?limit=5001")).status).toBe(400);
  });
});

describe("tampering behind the API's back", () => {
  test("a row edited in the database is the first broken link, for the tenant admin and the operator", async () => {
    const t = await createTenant(freshSlug("ac-edit"), { plan: "pro" });
    await addProjects(t, 6);
    expect((await operatorVerify(t)).json.ok).toBe(true);
    const id = await auditIdOf(t, "p2");
    await sql(t.uuid, `UPDATE audit_log SET detail = '{"name":"forged"}' WHERE id = ?1`, [id]);

    const mine = await tenantVerify(t);
    expect(mine.status).toBe(200);
    expect(mine.json.ok).toBe(false);
    expect(mine.json.first_broken).toMatchObject({ id, reason: "content_changed" });
    const operator = await operatorVerify(t);
    expect(operator.json.ok).toBe(false);
    expect(operator.json.first_broken).toMatchObject({ id, reason: "content_changed" });
    expect(operator.json.anchored).toBeNull(); // a broken log is never anchored

    // New writes are still sealed, and the break stays where it is.
    await addProjects(t, 2, "after");
    await sealed(t);
    expect((await tenantVerify(t)).json.first_broken).toMatchObject({ id, reason: "content_changed" });
  });

  test("a row deleted in the database is reported as missing, by both", async () => {
    const t = await createTenant(freshSlug("ac-del"), { plan: "pro" });
    await addProjects(t, 6);
    await sealed(t);
    const id = await auditIdOf(t, "p1");
    await sql(t.uuid, "DELETE FROM audit_log WHERE id = ?1", [id]);
    for (const res of [await tenantVerify(t), await operatorVerify(t)]) {
      expect(res.status, res.text).toBe(200);
      expect(res.json.ok).toBe(false);
      expect(res.json.first_broken).toMatchObject({ id, reason: "rows_missing" });
    }
    // The newest two rows deleted as well: past the first break, the tail is reported.
    const last = (await rows(t.uuid, "SELECT max(id) AS id FROM audit_log"))[0].id;
    await sql(t.uuid, "DELETE FROM audit_log WHERE id >= ?1", [last - 1]);
    const tail = await tenantVerify(t, `?cursor=${id + 1}`);
    expect(tail.json.first_broken).toMatchObject({ id: last - 1, reason: "tail_missing" });
  });

  test("a log rewritten from a row on, every later hash recomputed, verifies as a chain but not against the operator's anchor", async () => {
    const t = await createTenant(freshSlug("ac-tail"), { plan: "pro" });
    await addProjects(t, 6);
    const anchored = (await operatorVerify(t)).json.anchored;
    expect(anchored.last_id).toBeGreaterThan(6);
    // Rewrite row p1's audit row and have every hash from it on recomputed (by the sealer
    // itself: the hashes are cleared and the next pass seals them again).
    const id = await auditIdOf(t, "p1");
    await sql(t.uuid, `UPDATE audit_log SET detail = '{"name":"forged"}' WHERE id = ?1`, [id]);
    await sql(t.uuid, "UPDATE audit_log SET hash = NULL, prev_hash = NULL WHERE id >= ?1", [id]);

    const mine = await tenantVerify(t);
    expect(mine.json.ok).toBe(false);
    expect(mine.json.first_broken).toMatchObject({ id: anchored.last_id, reason: "anchor_mismatch" });
    expect(mine.json.anchor).toMatchObject({ last_id: anchored.last_id, hash: anchored.hash, status: "broken" });
    expect(mine.json.sealed_through).toBe(anchored.last_id); // the chain itself checks out
    const operator = await operatorVerify(t);
    expect(operator.json.first_broken).toMatchObject({ id: anchored.last_id, reason: "anchor_mismatch" });
    expect(operator.json.anchored).toBeNull(); // the anchor is not moved onto the rewritten log
  });
});

describe("who may verify", () => {
  test("a member gets 403; the operator's route needs the admin token and a tenant in service", async () => {
    const t = await createTenant(freshSlug("ac-who"), { plan: "pro" });
    const created = await authed(t.slug, t.token, "/api/users", {
      method: "POST",
      body: { email: "m@x.test", password: ADMIN_PASSWORD, role: "member" },
    });
    expect(created.status).toBe(201);
    const member = await login(t.slug, "m@x.test");
    const refused = await authed(t.slug, member, "/api/audit-log/verify");
    expect([refused.status, refused.json.error.code]).toEqual([403, "admin_required"]);
    expect((await authed(t.slug, t.token, "/api/audit-log/verify", { method: "POST" })).status).toBe(405);
    expect((await request(`${t.slug}.localhost`, "/api/audit-log/verify")).status).toBe(401);

    const noToken = await request("localhost", `/v1/tenants/${t.slug}/audit/verify`);
    expect(noToken.status).toBe(401);
    expect((await admin("GET", "/v1/tenants/no-such-tenant/audit/verify")).status).toBe(404);
    expect((await admin("POST", `/v1/tenants/${t.slug}/audit/verify`)).status).toBe(405);
    await admin("DELETE", `/v1/tenants/${t.slug}`);
    const deleted = await operatorVerify(t);
    expect([deleted.status, deleted.json.error.code]).toEqual([409, "tenant_not_in_service"]);
  });
});

describe("restores", () => {
  test("after a point-in-time restore an anchor past the restored head is reported as such, not as tampering, and re-anchored", async () => {
    const t = await createTenant(freshSlug("ac-pitr"), { plan: "pro" });
    await addProjects(t, 2, "early");
    await sealed(t);
    await sleep(1_500);
    const at = new Date().toISOString();
    await sleep(1_500);
    await addProjects(t, 3, "late");
    const before = (await operatorVerify(t)).json;
    expect(before.ok).toBe(true);

    const res = await admin("POST", `/v1/tenants/${t.slug}/restore`, { at });
    expect([200, 202], res.text).toContain(res.status);
    await waitFor(
      async () => {
        const op = (await admin("GET", `/v1/tenants/${t.slug}/operations`)).json.operations[0];
        await admin("GET", `/v1/tenants/${t.slug}`); // carries the restore on
        return op.kind === "restore_point_in_time" && op.state === "succeeded";
      },
      "the restore to finish",
      60_000,
    );
    await waitFor(async () => (await authed(t.slug, t.token, "/api/projects")).status === 200, "the tenant to serve again");

    const mine = await tenantVerify(t);
    expect(mine.json.ok, mine.text).toBe(true);
    expect(mine.json.anchor).toMatchObject({ last_id: before.anchored.last_id, status: "after_restore" });
    expect(mine.json.sealed_through).toBeLessThan(before.anchored.last_id);
    const operator = await operatorVerify(t);
    expect(operator.json.ok).toBe(true);
    expect(operator.json.anchor.status).toBe("after_restore");
    expect(operator.json.anchored.last_id).toBe(operator.json.sealed_through);
    // The new anchor holds.
    expect((await operatorVerify(t)).json.anchor.status).toBe("held");
  });
});
