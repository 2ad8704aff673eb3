// The tenant API's invariants under concurrency: bursts of concurrent requests on every tenant
// write route, then the invariants read back from the tenant database itself. Each rule that
// guards a write (the login throttle, plan limits, "at least one admin", uniqueness) must hold
// whatever the interleaving; no burst may produce a 5xx; every acknowledged write is in the
// database, every refused one is not, and the audit log holds exactly the changes that happened.

import { beforeAll, describe, expect, test } from "vitest";
import { ADMIN_PASSWORD, authed, createTenant, freshSlug, login, request, sql } from "../helpers.mjs";

/** The throttle's limit (`MAX_FAILURES` in src/tenant/auth.rs). */
const MAX_FAILURES = 10;

/**
 * @typedef {{ status: number, headers: Record<string, string>, text: string, json: any }} Res
 * @typedef {{ slug: string, uuid: string, email: string, token: string }} Tenant
 */

/**
 * Runs `count` requests at once. A first round of cheap requests opens `count` keep-alive
 * connections, so the burst itself is not spread out by connection setup: without it a fast
 * handler can finish before the next request has even connected, and nothing overlaps.
 * @param {number} count
 * @param {(i: number) => Promise<Res>} send
 * @returns {Promise<Res[]>}
 */
const burst = async (count, send) => {
  await Promise.all(Array.from({ length: count }, () => request("localhost", "/healthz")));
  return Promise.all(Array.from({ length: count }, (_, i) => send(i)));
};

/**
 * How many responses have each status, e.g. `{ 201: 1, 409: 19 }`.
 * @param {Res[]} responses
 */
const tally = (responses) => {
  /** @type {Record<number, number>} */
  const counts = {};
  for (const r of responses) counts[r.status] = (counts[r.status] ?? 0) + 1;
  return counts;
};

/**
 * No response is a server error, and every error is a JSON error with a code.
 * @param {Res[]} responses
 */
const expectNoServerErrors = (responses) => {
  const bad = responses.filter((r) => r.status >= 500 || (r.status >= 400 && typeof r.json?.error?.code !== "string"));
  expect(bad.map((r) => `${r.status} ${r.text.slice(0, 200)}`)).toEqual([]);
};

/**
 * The rows of one query on tenant database `uuid`.
 * @param {string} uuid
 * @param {string} statement
 * @param {unknown[]} [params]
 * @returns {Promise<any[]>}
 */
const rows = async (uuid, statement, params) => (await sql(uuid, statement, params))[0].results;

/**
 * The number of audit rows with `action` (and, if given, `target`).
 * @param {Tenant} t
 * @param {string} action
 * @param {string} [target]
 */
const audited = async (t, action, target) =>
  (
    await rows(
      t.uuid,
      `SELECT count(*) AS n FROM audit_log WHERE action = ?1${target ? " AND target = ?2" : ""}`,
      target ? [action, target] : [action],
    )
  )[0].n;

/**
 * Creates a user through the API (as the admin holding `token`) and signs them in.
 * @param {Tenant} t
 * @param {string} email
 * @param {"admin" | "member"} role
 */
async function addUser(t, email, role, token = t.token) {
  const res = await authed(t.slug, token, "/api/users", { method: "POST", body: { email, password: ADMIN_PASSWORD, role } });
  expect(res.status, res.text).toBe(201);
  return { id: /** @type {number} */ (res.json.user.id), email, token: await login(t.slug, email) };
}

describe("login throttle", () => {
  /** @type {Tenant} */
  let t;
  beforeAll(async () => {
    t = await createTenant(freshSlug("cc-login"));
  });

  /**
   * 40 concurrent sign-ins for `email`, `right` (if any) at index 20.
   * @param {string} email
   * @param {string} [right]
   */
  const guesses = (email, right) =>
    burst(40, (i) =>
      request(`${t.slug}.localhost`, "/api/auth/login", {
        method: "POST",
        body: { email, password: i === 20 && right ? right : `wrong guess ${i}` },
      }),
    );

  /**
   * The burst's shape every email must show: only 200/401/429, the 429s with a Retry-After
   * until the window ends, and at most MAX_FAILURES failed password checks.
   * @param {Res[]} responses
   */
  const expectThrottled = (responses) => {
    expectNoServerErrors(responses);
    const counts = tally(responses);
    expect(
      Object.keys(counts).every((s) => ["200", "401", "429"].includes(s)),
      JSON.stringify(counts),
    ).toBe(true);
    for (const r of responses.filter((r) => r.status === 429)) {
      expect(r.json.error.code).toBe("too_many_attempts");
      expect(Number(r.headers["retry-after"])).toBeGreaterThan(800);
      expect(Number(r.headers["retry-after"])).toBeLessThanOrEqual(900);
    }
    // A password check is any answer that is not a 429.
    const failedChecks = counts[401] ?? 0;
    const checks = responses.length - (counts[429] ?? 0);
    expect(failedChecks, JSON.stringify(counts)).toBeLessThanOrEqual(MAX_FAILURES);
    // A successful sign-in gives its reservation back (it is not a failure): with the right
    // password in the burst, one more check than MAX_FAILURES can happen, never more.
    expect(checks, JSON.stringify(counts)).toBeLessThanOrEqual(MAX_FAILURES + (counts[200] ?? 0));
    return counts;
  };

  test("40 concurrent guesses (one of them right) get at most 10 failed password checks", async () => {
    const victim = await addUser(t, `victim@${t.slug}.test`, "member");
    const responses = await guesses(victim.email, ADMIN_PASSWORD);
    const counts = expectThrottled(responses);
    expect(counts[429]).toBeGreaterThanOrEqual(40 - MAX_FAILURES - 1);
    // The window is closed now, for the right password too.
    const after = await request(`${t.slug}.localhost`, "/api/auth/login", {
      method: "POST",
      body: { email: victim.email, password: ADMIN_PASSWORD },
    });
    expect(after.status).toBe(429);
    // Each acknowledged outcome is in the audit log, and nothing else.
    expect(await audited(t, "login.failed", `email:${victim.email}`)).toBe(counts[401] ?? 0);
    expect(await audited(t, "login", `user:${victim.id}`)).toBe(1 + (counts[200] ?? 0)); // 1: addUser's login
  });

  test("an unknown email is throttled the same way: exactly 10 checks, the rest 429", async () => {
    const email = `nobody-${freshSlug("u")}@x.test`;
    const counts = expectThrottled(await guesses(email));
    expect(counts).toEqual({ 401: MAX_FAILURES, 429: 40 - MAX_FAILURES });
    expect(await audited(t, "login.failed", `email:${email}`)).toBe(MAX_FAILURES);
    // Another email of the same tenant is not affected.
    expect(await login(t.slug, t.email)).toBeTruthy();
  });
});

describe("users", () => {
  test("8 concurrent creates on a free tenant with 3 users stop at the plan's 5", async () => {
    const t = await createTenant(freshSlug("cc-users"));
    for (const i of [1, 2]) await addUser(t, `seed${i}@x.test`, "member");
    const emails = Array.from({ length: 8 }, (_, i) => `burst${i}@x.test`);
    const responses = await burst(8, (i) =>
      authed(t.slug, t.token, "/api/users", { method: "POST", body: { email: emails[i], password: "a fine password" } }),
    );
    expectNoServerErrors(responses);
    expect(tally(responses)).toEqual({ 201: 2, 403: 6 });
    for (const r of responses.filter((r) => r.status === 403)) expect(r.json.error.code).toBe("plan_limit_reached");
    const stored = (await rows(t.uuid, "SELECT email FROM users")).map((u) => u.email);
    expect(stored).toHaveLength(5);
    responses.forEach((r, i) => expect(stored.includes(emails[i]), `${emails[i]}: ${r.status}`).toBe(r.status === 201));
    expect(await audited(t, "user.create")).toBe(2 + 2);
  });

  test("20 concurrent creates with one email: one 201, the rest 409 email_taken", async () => {
    const t = await createTenant(freshSlug("cc-email"), { plan: "enterprise" });
    const responses = await burst(20, (i) =>
      authed(t.slug, t.token, "/api/users", {
        method: "POST",
        body: { email: i % 2 ? "Same@X.test" : "same@x.test", password: "a fine password" },
      }),
    );
    expectNoServerErrors(responses);
    expect(tally(responses)).toEqual({ 201: 1, 409: 19 });
    for (const r of responses.filter((r) => r.status === 409)) expect(r.json.error.code).toBe("email_taken");
    expect((await rows(t.uuid, "SELECT count(*) AS n FROM users WHERE email = 'same@x.test'"))[0].n).toBe(1);
    expect(await audited(t, "user.create")).toBe(1);

    // Two users renamed to one email at once: one 200, one 409; the audit log has the one.
    const a = await addUser(t, "a@x.test", "member");
    const b = await addUser(t, "b@x.test", "member");
    const renames = await burst(2, (i) =>
      authed(t.slug, t.token, `/api/users/${[a, b][i].id}`, { method: "PATCH", body: { email: "taken@x.test" } }),
    );
    expectNoServerErrors(renames);
    expect(renames.map((r) => r.status).sort()).toEqual([200, 409]);
    expect(renames.find((r) => r.status === 409)?.json.error.code).toBe("email_taken");
    expect(await audited(t, "user.update")).toBe(1);
  });

  test(
    "two admins demoting each other at once (with and without a password change): an admin always remains",
    { timeout: 120_000 },
    async () => {
      const t = await createTenant(freshSlug("cc-demote"));
      const first = { id: (await authed(t.slug, t.token, "/api/me")).json.user.id, token: t.token };
      const second = await addUser(t, "second@x.test", "admin");
      const admins = [first, second];
      let acknowledged = 0;
      for (let round = 0; round < 10; round++) {
        // Odd rounds change only the role: without the slow hash the requests overlap differently.
        const body = (/** @type {number} */ i) =>
          round % 2 ? { role: "member" } : { role: "member", password: `new password ${round}-${i}` };
        const responses = await burst(2, (i) =>
          authed(t.slug, admins[i].token, `/api/users/${admins[1 - i].id}`, { method: "PATCH", body: body(i) }),
        );
        expectNoServerErrors(responses);
        const remaining = await rows(t.uuid, "SELECT id FROM users WHERE role = 'admin'");
        expect(remaining, `round ${round}: ${responses.map((r) => r.status)}`).toHaveLength(1);
        // One demotion lands. The other is refused: 409 last_admin, or 403 when its admin was
        // already demoted by the time their request was authenticated.
        expect(responses.filter((r) => r.status === 200)).toHaveLength(1);
        const refused = responses.find((r) => r.status !== 200);
        expect([
          [409, "last_admin"],
          [403, "admin_required"],
        ]).toContainEqual([refused?.status, refused?.json.error.code]);
        acknowledged++;
        // The admin left promotes the other again, for the next round.
        const admin = admins.find((a) => a.id === remaining[0].id);
        const other = admins.find((a) => a.id !== remaining[0].id);
        const promote = await authed(t.slug, admin?.token ?? "", `/api/users/${other?.id}`, { method: "PATCH", body: { role: "admin" } });
        expect(promote.status, promote.text).toBe(200);
        acknowledged++;
      }
      expect(await audited(t, "user.update")).toBe(acknowledged);
    },
  );

  test("admins deleting each other in a ring: an admin always remains; one user deleted by many: one 200", async () => {
    const t = await createTenant(freshSlug("cc-delete"), { plan: "enterprise" });
    const first = { id: (await authed(t.slug, t.token, "/api/me")).json.user.id, token: t.token };
    const ring = [first];
    for (let i = 1; i < 8; i++) ring.push(await addUser(t, `admin${i}@x.test`, "admin"));
    // Each token verified and its user read once, so the burst's requests reach their handlers at once.
    for (const a of ring) expect((await authed(t.slug, a.token, "/api/me")).status).toBe(200);
    const responses = await burst(ring.length, (i) =>
      authed(t.slug, ring[i].token, `/api/users/${ring[(i + 1) % ring.length].id}`, { method: "DELETE" }),
    );
    expectNoServerErrors(responses);
    // An admin deleted before their own request was authenticated gets a 401 (and their
    // victim survives); whatever the interleaving, at least one admin remains, a 409 is only
    // ever the last admin's, and every 200 is a deleted admin with its audit row.
    const counts = tally(responses);
    expect(
      Object.keys(counts).every((s) => ["200", "401", "409"].includes(s)),
      JSON.stringify(counts),
    ).toBe(true);
    const remaining = await rows(t.uuid, "SELECT id FROM users WHERE role = 'admin'");
    expect(remaining.length, JSON.stringify(counts)).toBeGreaterThanOrEqual(1);
    expect(counts[200] ?? 0).toBe(ring.length - remaining.length);
    expect(counts[409] ?? 0).toBeLessThanOrEqual(remaining.length === 1 ? 1 : 0);
    for (const r of responses.filter((r) => r.status === 409)) expect(r.json.error.code).toBe("last_admin");
    responses.forEach((r, i) => {
      const victim = ring[(i + 1) % ring.length].id;
      if (r.status === 200) expect(remaining.some((a) => a.id === victim)).toBe(false);
    });
    expect(await audited(t, "user.delete")).toBe(counts[200] ?? 0);

    const survivor = ring.find((a) => a.id === remaining[0].id);
    const member = await addUser(t, "member@x.test", "member", survivor?.token);
    const deletes = await burst(10, () => authed(t.slug, survivor?.token ?? "", `/api/users/${member.id}`, { method: "DELETE" }));
    expectNoServerErrors(deletes);
    expect(tally(deletes)).toEqual({ 200: 1, 404: 9 });
    expect(await audited(t, "user.delete", `user:${member.id}`)).toBe(1);
  });
});

describe("projects", () => {
  test("12 concurrent creates on a free tenant stop at the plan's 3", async () => {
    const t = await createTenant(freshSlug("cc-proj"));
    const responses = await burst(12, (i) => authed(t.slug, t.token, "/api/projects", { method: "POST", body: { name: `p${i}` } }));
    expectNoServerErrors(responses);
    expect(tally(responses)).toEqual({ 201: 3, 403: 9 });
    for (const r of responses.filter((r) => r.status === 403)) expect(r.json.error.code).toBe("plan_limit_reached");
    const names = (await rows(t.uuid, "SELECT name FROM projects")).map((p) => p.name);
    expect(names).toHaveLength(3);
    responses.forEach((r, i) => expect(names.includes(`p${i}`), `p${i}: ${r.status}`).toBe(r.status === 201));
    expect(await audited(t, "project.create")).toBe(3);
  });

  test("20 PATCHes and 10 DELETEs of one project at once: one delete, no phantom audit rows", async () => {
    const t = await createTenant(freshSlug("cc-pupd"), { plan: "enterprise" });
    const id = (await authed(t.slug, t.token, "/api/projects", { method: "POST", body: { name: "contested" } })).json.project.id;
    const responses = await burst(30, (i) =>
      i % 3 === 0
        ? authed(t.slug, t.token, `/api/projects/${id}`, { method: "DELETE" })
        : authed(t.slug, t.token, `/api/projects/${id}`, { method: "PATCH", body: { description: `edit ${i}` } }),
    );
    expectNoServerErrors(responses);
    const deletes = responses.filter((_, i) => i % 3 === 0);
    const patches = responses.filter((_, i) => i % 3 !== 0);
    expect(tally(deletes)).toEqual({ 200: 1, 404: 9 });
    expect(patches.every((r) => r.status === 200 || r.status === 404)).toBe(true);
    expect(await rows(t.uuid, "SELECT id FROM projects WHERE id = ?1", [id])).toEqual([]);
    expect(await audited(t, "project.delete", `project:${id}`)).toBe(1);
    expect(await audited(t, "project.update", `project:${id}`)).toBe(patches.filter((r) => r.status === 200).length);
  });
});

describe("roles and settings", () => {
  /** @type {Tenant} */
  let t;
  beforeAll(async () => {
    t = await createTenant(freshSlug("cc-roles"));
  });

  test("20 concurrent creates of one role: one 201, the rest 409 role_exists", async () => {
    const responses = await burst(20, (i) =>
      authed(t.slug, t.token, "/api/roles", { method: "POST", body: { name: "reviewer", description: `try ${i}` } }),
    );
    expectNoServerErrors(responses);
    expect(tally(responses)).toEqual({ 201: 1, 409: 19 });
    for (const r of responses.filter((r) => r.status === 409)) expect(r.json.error.code).toBe("role_exists");
    const stored = await rows(t.uuid, "SELECT description FROM roles WHERE name = 'reviewer'");
    expect(stored).toHaveLength(1);
    expect(stored[0].description).toBe(responses.find((r) => r.status === 201)?.json.role.description);
    expect(await audited(t, "role.create", "role:reviewer")).toBe(1);
  });

  test("20 PATCHes and 10 DELETEs of one role at once: one delete, no phantom audit rows", async () => {
    expect((await authed(t.slug, t.token, "/api/roles", { method: "POST", body: { name: "editor" } })).status).toBe(201);
    const responses = await burst(30, (i) =>
      i % 3 === 0
        ? authed(t.slug, t.token, "/api/roles/editor", { method: "DELETE" })
        : authed(t.slug, t.token, "/api/roles/editor", { method: "PATCH", body: { description: `edit ${i}` } }),
    );
    expectNoServerErrors(responses);
    const deletes = responses.filter((_, i) => i % 3 === 0);
    const patches = responses.filter((_, i) => i % 3 !== 0);
    expect(tally(deletes)).toEqual({ 200: 1, 404: 9 });
    expect(patches.every((r) => r.status === 200 || r.status === 404)).toBe(true);
    expect(await rows(t.uuid, "SELECT name FROM roles WHERE name = 'editor'")).toEqual([]);
    expect(await audited(t, "role.delete", "role:editor")).toBe(1);
    expect(await audited(t, "role.update", "role:editor")).toBe(patches.filter((r) => r.status === 200).length);
  });

  test("30 concurrent settings PATCHes: all applied, one audit row each", async () => {
    const responses = await burst(30, (i) =>
      authed(t.slug, t.token, "/api/settings", { method: "PATCH", body: { [`key.${i}`]: i, shared: i } }),
    );
    expectNoServerErrors(responses);
    expect(tally(responses)).toEqual({ 200: 30 });
    const stored = Object.fromEntries((await rows(t.uuid, "SELECT key, value FROM settings")).map((s) => [s.key, JSON.parse(s.value)]));
    for (let i = 0; i < 30; i++) expect(stored[`key.${i}`]).toBe(i);
    expect(stored.shared).toBeGreaterThanOrEqual(0);
    expect(stored.shared).toBeLessThan(30);
    expect(await audited(t, "settings.update")).toBe(30);
  });
});
