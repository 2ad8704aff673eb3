// The tenant request path: status gates, the lookup cache, sign-in and tokens, the tenant
// context's users, projects, audit log and plan limits.

import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, beforeAll, describe, expect, test } from "vitest";
import {
  ADMIN_PASSWORD,
  admin,
  authed,
  createTenant,
  freshSlug,
  login,
  request,
  setBindings,
  setFaults,
  sql,
  stack,
  waitFor,
} from "../helpers.mjs";
import { decode, mint } from "../jwt.mjs";

const CONTROL_QUERIES = "x-tenantry-control-queries";

describe("status gates", () => {
  afterEach(() => setFaults([]));

  test("provisioning is 503 with Retry-After; suspended is 403 with the message; deleted is 404", async () => {
    // A create held at the bind step stays provisioning.
    const slug = freshSlug("gate");
    await setFaults([{ endpoint: "scripts.settings.get", kind: "error", status: 500 }]);
    await admin("POST", "/v1/tenants", { slug, name: slug, admin: { email: `a@${slug}.test`, password: ADMIN_PASSWORD } });
    const provisioning = await request(`${slug}.localhost`, "/api/me");
    expect(provisioning.status).toBe(503);
    expect(provisioning.json.error.code).toBe("tenant_provisioning");
    expect(provisioning.headers["retry-after"]).toBe("5");
    await setFaults([]);

    const t = await createTenant();
    await admin("PATCH", `/v1/tenants/${t.slug}`, { status: "suspended", message: "unpaid invoice #42" });
    await waitFor(
      async () => (await authed(t.slug, t.token, "/api/me")).status === 403,
      "the suspension to take effect (cache TTL 5 s)",
      8000,
    );
    const suspended = await authed(t.slug, t.token, "/api/me");
    expect(suspended.json.error).toEqual({ code: "tenant_suspended", message: "this tenant is suspended: unpaid invoice #42" });
    await admin("PATCH", `/v1/tenants/${t.slug}`, { status: "active" });
    await waitFor(async () => (await authed(t.slug, t.token, "/api/me")).status === 200, "the resume to take effect", 8000);

    await admin("DELETE", `/v1/tenants/${t.slug}`);
    await waitFor(async () => (await authed(t.slug, t.token, "/api/me")).status === 404, "the deletion to take effect", 8000);
    expect((await authed(t.slug, t.token, "/api/me")).json.error.code).toBe("tenant_not_found");
  });

  test("after warm-up a request makes no control-plane query", async () => {
    const t = await createTenant();
    const counts = [];
    for (let i = 0; i < 20; i++) counts.push(Number((await authed(t.slug, t.token, "/api/projects")).headers[CONTROL_QUERIES]));
    // At most one lookup per cache TTL (5 s); 20 quick requests fit in one or two windows.
    expect(counts.filter((c) => c === 1).length).toBeLessThanOrEqual(2);
    expect(counts.slice(-5)).toEqual([0, 0, 0, 0, 0]);
    expect(counts.every((c) => c === 0 || c === 1)).toBe(true);
  });

  test("under steady traffic the row is refreshed in the background, and a change made on the control plane still lands within the TTL", async () => {
    const t = await createTenant();
    await authed(t.slug, t.token, "/api/projects"); // the lookup on the path
    const seen = [];
    const started = Date.now();
    while (Date.now() - started < 6_500) {
      const res = await authed(t.slug, t.token, "/api/projects");
      seen.push({ status: res.status, queries: res.headers[CONTROL_QUERIES], refresh: res.headers["x-tenantry-control-refresh"] });
      await sleep(100);
    }
    // Longer than the TTL (5 s), yet no request waited on the control plane: the row was
    // refreshed behind a request (marked), never on one's path.
    expect(
      seen.every((s) => s.status === 200 && s.queries === "0"),
      JSON.stringify(seen),
    ).toBe(true);
    expect(seen.filter((s) => s.refresh === "1").length).toBeGreaterThanOrEqual(1);

    // Suspended behind the Worker's back (not through the admin API, which would forget the row):
    // the background refresh brings it in within the TTL.
    await sql(stack.controlDatabaseId, "UPDATE tenants SET status = 'suspended', status_message = 'side door' WHERE slug = ?1", [t.slug]);
    const suspendedAt = Date.now();
    await waitFor(async () => (await authed(t.slug, t.token, "/api/projects")).status === 403, "the suspension to be seen", 10_000);
    expect(Date.now() - suspendedAt).toBeLessThan(6_000);
    await sql(stack.controlDatabaseId, "UPDATE tenants SET status = 'active', status_message = NULL WHERE slug = ?1", [t.slug]);
  }, 30_000);
});

describe("sign-in and tokens", () => {
  let t;
  beforeAll(async () => {
    t = await createTenant();
  });

  test("login returns a token for this tenant; /api/me answers with the user", async () => {
    const res = await request(`${t.slug}.localhost`, "/api/auth/login", {
      method: "POST",
      body: { email: t.email.toUpperCase(), password: ADMIN_PASSWORD },
    });
    expect(res.status).toBe(200);
    expect(res.json).toMatchObject({ token_type: "Bearer", user: { email: t.email, role: "admin" } });
    const claims = decode(res.json.token);
    expect(claims).toMatchObject({ tenant: t.slug, db: t.uuid, role: "admin", sub: res.json.user.id });
    expect(claims.exp - claims.iat).toBe(3600);
    const me = await authed(t.slug, res.json.token, "/api/me");
    expect(me.json).toMatchObject({ user: { email: t.email, role: "admin" }, tenant: { slug: t.slug, plan: "free" } });
  });

  test("wrong password, unknown email and bad bodies are refused", async () => {
    const host = `${t.slug}.localhost`;
    const wrong = await request(host, "/api/auth/login", { method: "POST", body: { email: t.email, password: "not the password" } });
    expect(wrong.status).toBe(401);
    const unknown = await request(host, "/api/auth/login", {
      method: "POST",
      body: { email: "nobody@x.test", password: "whatever it is" },
    });
    expect(unknown.status).toBe(401);
    expect(unknown.json.error.message).toBe(wrong.json.error.message);
    expect((await request(host, "/api/auth/login", { method: "POST", body: { email: 1 } })).status).toBe(422);
    const extra = await request(host, "/api/auth/login", {
      method: "POST",
      body: { email: t.email, password: ADMIN_PASSWORD, remember: true },
    });
    expect([extra.status, extra.json.error.fields]).toEqual([422, { remember: "is not a known field" }]);
    expect((await request(host, "/api/auth/login", { method: "POST", body: "{" })).status).toBe(400);
    expect((await request(host, "/api/auth/login")).status).toBe(405);
  });

  test("login is throttled per tenant and email after 10 failures", async () => {
    const host = `${t.slug}.localhost`;
    const email = `victim-${freshSlug("e")}@x.test`;
    const statuses = [];
    for (let i = 0; i < 12; i++) {
      statuses.push((await request(host, "/api/auth/login", { method: "POST", body: { email, password: `guess number ${i}` } })).status);
    }
    expect(statuses.slice(0, 10)).toEqual(Array(10).fill(401));
    expect(statuses.slice(10)).toEqual([429, 429]);
    const limited = await request(host, "/api/auth/login", { method: "POST", body: { email, password: "guess again!" } });
    expect(Number(limited.headers["retry-after"])).toBeGreaterThan(800);
    expect(limited.json.error.code).toBe("too_many_attempts");
    // Another email on the same tenant, and the same email on another tenant, are not affected.
    expect(await login(t.slug, t.email)).toBeTruthy();
    const other = await createTenant();
    expect(
      (await request(`${other.slug}.localhost`, "/api/auth/login", { method: "POST", body: { email, password: "nope nope nope" } })).status,
    ).toBe(401);
  });

  test("expired, forged and other tenants' tokens are refused; a deleted user's token stops working", async () => {
    const now = Math.floor(Date.now() / 1000);
    const base = { tenant: t.slug, db: t.uuid, sub: 1, role: "admin" };
    const cases = [
      [mint(stack.jwtKey, { ...base, iat: now - 7200, exp: now - 3600 }), 401],
      [mint(stack.jwtKey, { ...base, iat: now, exp: now + 60 }, { alg: "none", sign: false }), 401],
      [mint(stack.jwtKey, { ...base, iat: now, exp: now + 60 }, { kid: "retired" }), 401],
      [mint("local-1:some-other-secret-that-is-long-enough-0000", { ...base, iat: now, exp: now + 60 }), 401],
      [mint(stack.jwtKey, { ...base, tenant: "another-tenant", iat: now, exp: now + 60 }), 403],
      [mint(stack.jwtKey, { ...base, db: "a-database-of-an-earlier-tenant", iat: now, exp: now + 60 }), 401],
      [mint(stack.jwtKey, { ...base, db: undefined, iat: now, exp: now + 60 }), 401],
      [mint(stack.jwtKey, { ...base, iat: now, exp: now + 60 }), 200],
    ];
    for (const [token, status] of cases) {
      const res = await authed(t.slug, token, "/api/me");
      expect(res.status, `${token} ${res.text}`).toBe(status);
    }
    expect((await request(`${t.slug}.localhost`, "/api/me", { headers: { authorization: "Basic abc" } })).status).toBe(401);

    const created = await authed(t.slug, t.token, "/api/users", {
      method: "POST",
      body: { email: "temp@x.test", password: "temporary password" },
    });
    const tempToken = await login(t.slug, "temp@x.test", "temporary password");
    expect((await authed(t.slug, tempToken, "/api/me")).status).toBe(200);
    await authed(t.slug, t.token, `/api/users/${created.json.user.id}`, { method: "DELETE" });
    expect((await authed(t.slug, tempToken, "/api/me")).status).toBe(401);
  });

  test("a user changed behind the API's back is seen within the user cache window (5 s)", async () => {
    const created = await authed(t.slug, t.token, "/api/users", {
      method: "POST",
      body: { email: "side@x.test", password: "side door password", role: "admin" },
    });
    expect(created.status, created.text).toBe(201);
    const id = created.json.user.id;
    const token = await login(t.slug, "side@x.test", "side door password");
    expect((await authed(t.slug, token, "/api/me")).json.user.role).toBe("admin"); // now cached
    const uuid = (await admin("GET", `/v1/tenants/${t.slug}`)).json.tenant.database.id;
    await sql(uuid, "UPDATE users SET role = 'member' WHERE id = ?1", [id]);
    let started = Date.now();
    await waitFor(async () => (await authed(t.slug, token, "/api/me")).json.user.role === "member", "the demotion to be seen", 8_000);
    expect(Date.now() - started).toBeLessThan(7_000);
    await sql(uuid, "DELETE FROM users WHERE id = ?1", [id]);
    started = Date.now();
    await waitFor(async () => (await authed(t.slug, token, "/api/me")).status === 401, "the deletion to be seen", 8_000);
    expect(Date.now() - started).toBeLessThan(7_000);
  });
});

describe("users, projects, audit log, plan limits", () => {
  test("only admins manage users; members read themselves; the last admin is protected", async () => {
    const t = await createTenant();
    const member = await authed(t.slug, t.token, "/api/users", {
      method: "POST",
      body: { email: "m@x.test", password: "member password", role: "member" },
    });
    expect(member.status).toBe(201);
    expect(member.json.user).toMatchObject({ email: "m@x.test", role: "member" });
    expect(member.text).not.toContain("password");
    const dup = await authed(t.slug, t.token, "/api/users", { method: "POST", body: { email: "M@X.test", password: "member password" } });
    expect([dup.status, dup.json.error.code]).toEqual([409, "email_taken"]);
    const bad = await authed(t.slug, t.token, "/api/users", {
      method: "POST",
      body: { email: "nope", password: "short", role: "owner", x: 1 },
    });
    expect(bad.status).toBe(422);
    expect(Object.keys(bad.json.error.fields).sort()).toEqual(["email", "password", "role", "x"]);

    const mt = await login(t.slug, "m@x.test", "member password");
    expect((await authed(t.slug, mt, "/api/users")).json.error.code).toBe("admin_required");
    expect((await authed(t.slug, mt, "/api/audit-log")).status).toBe(403);
    expect((await authed(t.slug, mt, `/api/users/${member.json.user.id}`)).status).toBe(200);
    expect((await authed(t.slug, mt, "/api/users/1")).status).toBe(403);
    expect((await authed(t.slug, mt, "/api/users", { method: "POST", body: { email: "z@x.test", password: "zzzzzzzzzzzz" } })).status).toBe(
      403,
    );

    const me = (await authed(t.slug, t.token, "/api/me")).json.user;
    const demote = await authed(t.slug, t.token, `/api/users/${me.id}`, { method: "PATCH", body: { role: "member" } });
    expect([demote.status, demote.json.error.code]).toEqual([409, "last_admin"]);
    expect((await authed(t.slug, t.token, `/api/users/${me.id}`, { method: "DELETE" })).status).toBe(409);
    const promoted = await authed(t.slug, t.token, `/api/users/${member.json.user.id}`, { method: "PATCH", body: { role: "admin" } });
    expect(promoted.json.user.role).toBe("admin");
    // The role is read from the database on every request, not from the (older) token.
    expect((await authed(t.slug, mt, "/api/users")).status).toBe(200);
    expect((await authed(t.slug, t.token, "/api/users/999999")).status).toBe(404);
    expect((await authed(t.slug, t.token, "/api/users/abc")).status).toBe(404);
  });

  test("projects CRUD with cursor pagination, recorded in the audit log with actor and request id", async () => {
    const t = await createTenant(freshSlug("proj"), { plan: "pro" });
    const created = [];
    for (const name of ["one", "two", "three", "four", "five"]) {
      const res = await authed(t.slug, t.token, "/api/projects", { method: "POST", body: { name, description: `the ${name}` } });
      expect(res.status).toBe(201);
      created.push(res.json.project);
    }
    const seen = [];
    let cursor = "";
    for (let i = 0; i < 10; i++) {
      const page = await authed(t.slug, t.token, `/api/projects?limit=2${cursor ? `&cursor=${cursor}` : ""}`);
      seen.push(...page.json.projects.map((p) => p.name));
      if (!page.json.next_cursor) break;
      cursor = page.json.next_cursor;
    }
    expect(seen).toEqual(["one", "two", "three", "four", "five"]);

    const id = created[1].id;
    const patched = await authed(t.slug, t.token, `/api/projects/${id}`, { method: "PATCH", body: { name: "deux" } });
    expect(patched.json.project).toMatchObject({ name: "deux", description: "the two" });
    expect((await authed(t.slug, t.token, `/api/projects/${id}`, { method: "PATCH", body: { name: "" } })).status).toBe(422);
    const deleted = await authed(t.slug, t.token, `/api/projects/${id}`, { method: "DELETE" });
    expect(deleted.status).toBe(200);
    expect((await authed(t.slug, t.token, `/api/projects/${id}`)).status).toBe(404);

    const log = await authed(t.slug, t.token, "/api/audit-log?limit=200");
    const actions = log.json.entries.map((e) => e.action);
    expect(actions.filter((a) => a === "project.create")).toHaveLength(5);
    expect(actions).toEqual(expect.arrayContaining(["login", "project.update", "project.delete"]));
    const del = log.json.entries.find((e) => e.action === "project.delete");
    expect(del).toMatchObject({ actor: { email: t.email }, target: `project:${id}`, request_id: deleted.headers["x-request-id"] });
    expect(typeof del.at).toBe("string");
  });

  test("plan limits: free allows 3 projects and 5 users, then a 403 naming the limit", async () => {
    const t = await createTenant(freshSlug("free"), { plan: "free" });
    for (let i = 0; i < 3; i++)
      expect((await authed(t.slug, t.token, "/api/projects", { method: "POST", body: { name: `p${i}` } })).status).toBe(201);
    const fourth = await authed(t.slug, t.token, "/api/projects", { method: "POST", body: { name: "p3" } });
    expect(fourth.status).toBe(403);
    expect(fourth.json.error).toEqual({ code: "plan_limit_reached", message: "the free plan allows 3 projects; this tenant has 3" });
    for (let i = 0; i < 4; i++) {
      expect(
        (await authed(t.slug, t.token, "/api/users", { method: "POST", body: { email: `u${i}@x.test`, password: "a fine password" } }))
          .status,
      ).toBe(201);
    }
    const sixth = await authed(t.slug, t.token, "/api/users", {
      method: "POST",
      body: { email: "u9@x.test", password: "a fine password" },
    });
    expect(sixth.json.error.message).toBe("the free plan allows 5 users; this tenant has 5");
    // Upgrading the plan lifts the limit (within the lookup cache's TTL).
    await admin("PATCH", `/v1/tenants/${t.slug}`, { plan: "pro" });
    await waitFor(
      async () => (await authed(t.slug, t.token, "/api/projects", { method: "POST", body: { name: "p3" } })).status === 201,
      "the new plan to apply",
      8000,
    );
  });
});

describe("signing key rotation", () => {
  test("after a rotation, tokens of the previous key work until that key is dropped", async () => {
    const t = await createTenant();
    const oldToken = t.token;
    const kidOf = (token) => JSON.parse(Buffer.from(token.split(".")[0], "base64url").toString()).kid;
    const keys = (current, previous) => (bindings) => [
      ...bindings.filter((b) => !["JWT_SIGNING_KEY", "JWT_SIGNING_KEY_PREVIOUS"].includes(b.name)),
      { type: "secret_text", name: "JWT_SIGNING_KEY", text: current },
      ...(previous ? [{ type: "secret_text", name: "JWT_SIGNING_KEY_PREVIOUS", text: previous }] : []),
    ];
    expect(kidOf(oldToken)).toBe("local-1");
    await setBindings(keys("local-2:a-brand-new-master-secret-for-rotation-0001", stack.jwtKey));
    try {
      await waitFor(async () => kidOf(await login(t.slug, t.email)) === "local-2", "new tokens to use the new key");
      expect((await authed(t.slug, oldToken, "/api/me")).status).toBe(200);
      // Grace period over: drop the previous key.
      await setBindings(keys("local-2:a-brand-new-master-secret-for-rotation-0001"));
      await waitFor(async () => (await authed(t.slug, oldToken, "/api/me")).status === 401, "the previous key to be dropped");
      expect((await authed(t.slug, await login(t.slug, t.email), "/api/me")).status).toBe(200);
    } finally {
      await setBindings(keys(stack.jwtKey));
      await waitFor(async () => (await authed(t.slug, oldToken, "/api/me")).status === 200, "the original key to be back");
    }
  });
});
