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
  (await rows(t.uuid, `SELECT count(*) AS n FROM audit_log WHERE action = ?1${target ? " AND target = ?2" : ""}`, target ? [action, target] : [action]))[0].n;

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
    burst(40, (i) => request(`${t.slug}.localhost`, "/api/auth/login", { method: "POST", body: { email, password: i === 20 && right ? right : `wrong guess ${i}` } }));

  /**
   * The burst's shape every email must show: only 200/401/429, the 429s with a Retry-After
   * until the window ends, and at most MAX_FAILURES failed password checks.
   * @param {Res[]} responses
   */
  const expectThrottled = (responses) => {
    expectNoServerErrors(responses);
    const counts = tally(responses);
    expect(Object.keys(counts).every((s) => ["200", "401", "429"].includes(s)), JSON.stringify(counts)).toBe(true);
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
    const after = await request(`${t.slug}.localhost`, "/api/auth/login", { method: "POST", body: { email: victim.email, password: ADMIN_PASSWORD } });
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
