// Cross-tenant fuzz: 5 tenants × every tenant endpoint × (own token, another tenant's token,
// tampered, expired, none, alg=none, header spoofing). Asserts the status of every case, that no
// answer carries another tenant's data, and that no write landed anywhere but in the caller's
// own tenant. Prints how many cases ran.

import { beforeAll, expect, test } from "vitest";
import { authed, createTenant, freshSlug, request, sql, stack } from "../helpers.mjs";
import { mint, tamper } from "../jwt.mjs";

const TENANTS = 5;
let tenants;

beforeAll(async () => {
  const tag = freshSlug("sec");
  tenants = await Promise.all(Array.from({ length: TENANTS }, (_, i) => createTenant(`${tag}-${i}`, { plan: "enterprise" })));
  for (const t of tenants) {
    // Markers: strings that must never appear in another tenant's answers.
    t.marker = `marker-${t.slug}`;
    const p = await authed(t.slug, t.token, "/api/projects", {
      method: "POST",
      body: { name: `${t.marker}-project`, description: t.marker },
    });
    t.projectId = p.json.project.id;
    const u = await authed(t.slug, t.token, "/api/users", {
      method: "POST",
      body: { email: `${t.marker}@x.test`, password: "member password", role: "member" },
    });
    t.memberId = u.json.user.id;
    t.adminId = (await authed(t.slug, t.token, "/api/me")).json.user.id;
  }
}, 180_000);

/**
 * Every tenant endpoint, as (method, path, body) for tenant `t`.
 * @returns {[method: string, path: string, body?: unknown][]}
 */
function endpoints(t) {
  return [
    ["GET", "/api/me"],
    ["GET", "/api/tenant"],
    ["GET", "/api/users"],
    ["POST", "/api/users", { email: `new-${Math.random().toString(36).slice(2)}@x.test`, password: "another password" }],
    ["GET", `/api/users/${t.memberId}`],
    ["PATCH", `/api/users/${t.memberId}`, { role: "member" }],
    ["DELETE", "/api/users/999999"],
    ["GET", "/api/projects"],
    ["POST", "/api/projects", { name: `fuzz-${t.marker}` }],
    ["GET", `/api/projects/${t.projectId}`],
    ["PATCH", `/api/projects/${t.projectId}`, { description: t.marker }],
    ["DELETE", "/api/projects/999999"],
    ["GET", "/api/audit-log"],
    ["GET", "/api/audit-log/verify"],
    ["GET", "/api/roles"],
    ["POST", "/api/roles", { name: `r-${Math.random().toString(36).slice(2, 10)}`, description: t.marker }],
    ["GET", "/api/settings"],
    ["PATCH", "/api/settings", { note: t.marker }],
  ];
}

/** The status a legitimate call by the tenant's admin gets. */
function ownStatus(method) {
  if (method === "POST") return 201;
  if (method === "DELETE") return 404; // ids that do not exist: nothing is removed during the fuzz
  return 200;
}

test(`cross-tenant fuzz over ${TENANTS} tenants`, { timeout: 300_000 }, async () => {
  const now = Math.floor(Date.now() / 1000);
  let cases = 0;
  const failures = [];
  const check = (label, res, status, victim, caller) => {
    cases++;
    if (res.status !== status) failures.push(`${label}: status ${res.status}, wanted ${status}: ${res.text.slice(0, 200)}`);
    if (res.status >= 500) failures.push(`${label}: server error`);
    if (!/^application\/json/.test(res.headers["content-type"] ?? "")) failures.push(`${label}: not JSON`);
    // No answer may carry data of a tenant other than the one the caller belongs to.
    for (const other of tenants) {
      if (other !== caller && other !== victim && res.text.includes(other.marker)) failures.push(`${label}: leaked ${other.slug}`);
    }
    if (caller !== victim && res.text.includes(victim.marker)) failures.push(`${label}: leaked victim data to ${caller.slug}`);
  };

  for (const victim of tenants) {
    const other = tenants[(tenants.indexOf(victim) + 1) % TENANTS];
    const claims = { tenant: victim.slug, db: victim.uuid, sub: victim.adminId, role: "admin", iat: now, exp: now + 600 };
    const variants = [
      // [label, token, extra headers, host, expected status (fn), whose data the caller may see]
      ["own", victim.token, {}, `${victim.slug}.localhost`, ownStatus, victim],
      ["other-tenant-token", other.token, {}, `${victim.slug}.localhost`, () => 403, other],
      ["tampered", tamper(other.token, (c) => (c.tenant = victim.slug)), {}, `${victim.slug}.localhost`, () => 401, other],
      ["promoted", tamper(victim.token, (c) => (c.sub = victim.memberId + 1000)), {}, `${victim.slug}.localhost`, () => 401, other],
      ["expired", mint(stack.jwtKey, { ...claims, iat: now - 7200, exp: now - 3600 }), {}, `${victim.slug}.localhost`, () => 401, other],
      ["no-token", null, {}, `${victim.slug}.localhost`, () => 401, other],
      ["alg-none", mint(stack.jwtKey, claims, { alg: "none", sign: false }), {}, `${victim.slug}.localhost`, () => 401, other],
      ["spoof-header-on-subdomain", other.token, { "x-tenant-id": other.slug }, `${victim.slug}.localhost`, () => 400, other],
      ["spoof-header-on-apex", other.token, { "x-tenant-id": victim.slug }, "localhost", () => 403, other],
    ];
    for (const [label, token, headers, host, expected, caller] of variants) {
      for (const [method, path, body] of endpoints(victim)) {
        const res = await request(host, path, {
          method,
          body,
          headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...headers },
        });
        check(`${victim.slug} ${label} ${method} ${path}`, res, expected(method, path), victim, caller);
      }
    }
  }

  // No write landed anywhere but in its own tenant: every row of every tenant is its own.
  for (const t of tenants) {
    const [projects] = await sql(t.uuid, "SELECT name, description FROM projects");
    const [users] = await sql(t.uuid, "SELECT email FROM users");
    const [roles] = await sql(t.uuid, "SELECT description FROM roles");
    const [settings] = await sql(t.uuid, "SELECT value FROM settings");
    const text = JSON.stringify([projects.results, users.results, roles.results, settings.results]);
    for (const other of tenants) if (other !== t && text.includes(other.marker)) failures.push(`${t.slug} holds ${other.slug}'s data`);
    // Exactly the fuzz's own-token creations happened: 1 (setup) + 1 (own POST) project.
    expect(projects.results.length, t.slug).toBe(2);
    expect(users.results.length, t.slug).toBe(3);
  }

  console.log(
    `security fuzz: ${cases} cases (${TENANTS} tenants × ${endpoints(tenants[0]).length} endpoints × 9 variants), ${failures.length} failures`,
  );
  expect(failures).toEqual([]);
});

test("methods outside the routes' own are 405 with Allow, on the tenant and the admin API alike", async () => {
  const t = tenants[0];
  const host = `${t.slug}.localhost`;
  const auth = { authorization: `Bearer ${t.token}` };
  // workers-rs reads an unknown method as GET: these must not be served as one.
  const cases = [
    [host, "/api/projects", "GET, POST"],
    [host, `/api/projects/${t.projectId}`, "GET, PATCH, DELETE"],
    [host, "/api/settings", "GET, PATCH"],
    [host, "/api/me", "GET"],
    [host, "/api/auth/login", "POST"],
    ["localhost", "/healthz", "GET"],
    ["localhost", "/v1/tenants", "GET, POST"],
    ["localhost", `/v1/tenants/${t.slug}`, "GET, PATCH, DELETE"],
  ];
  for (const [h, path, allow] of cases) {
    for (const method of ["PROPFIND", "PURGE", "SEARCH"]) {
      const headers = h === "localhost" ? { authorization: `Bearer ${stack.adminToken}` } : auth;
      const res = await request(h, path, { method, headers });
      expect([res.status, res.json?.error?.code, res.headers.allow], `${method} ${h}${path}`).toEqual([405, "method_not_allowed", allow]);
    }
  }
});

test("the admin API reads the Bearer scheme in any letter case, as the tenant API does", async () => {
  for (const scheme of ["Bearer", "bearer", "BEARER"]) {
    const res = await request("localhost", `/v1/tenants/${tenants[0].slug}`, {
      headers: { authorization: `${scheme} ${stack.adminToken}` },
    });
    expect(res.status, scheme).toBe(200);
    const tenant = await request(`${tenants[0].slug}.localhost`, "/api/me", {
      headers: { authorization: `${scheme} ${tenants[0].token}` },
    });
    expect(tenant.status, scheme).toBe(200);
  }
  expect((await request("localhost", "/v1/tenants", { headers: { authorization: `bearer wrong-${stack.adminToken}` } })).status).toBe(401);
  expect((await request("localhost", "/v1/tenants", { headers: { authorization: `Basic ${stack.adminToken}` } })).status).toBe(401);
});

test("tokens not valid yet, with a critical header extension, or living longer than issued ones are refused", async () => {
  const t = tenants[0];
  const now = Math.floor(Date.now() / 1000);
  const claims = { tenant: t.slug, db: t.uuid, sub: t.adminId, role: "admin", iat: now, exp: now + 600 };
  const cases = [
    ["valid", mint(stack.jwtKey, claims), 200],
    ["nbf within the leeway", mint(stack.jwtKey, { ...claims, nbf: now + 10 }), 200],
    ["nbf in the future", mint(stack.jwtKey, { ...claims, nbf: now + 120 }), 401],
    ["crit", mint(stack.jwtKey, claims, { header: { crit: ["exp"] } }), 401],
    ["crit with an unknown extension", mint(stack.jwtKey, { ...claims, "x-ext": 1 }, { header: { crit: ["x-ext"], "x-ext": 1 } }), 401],
    ["a lifetime of a day", mint(stack.jwtKey, { ...claims, exp: now + 86_400 }), 401],
    ["a lifetime of exactly 1 h", mint(stack.jwtKey, { ...claims, exp: now + 3600 }), 200],
    ["no iat", mint(stack.jwtKey, { ...claims, iat: undefined }), 401],
    ["iat in the future", mint(stack.jwtKey, { ...claims, iat: now + 600, exp: now + 1200 }), 401],
  ];
  for (const [label, token, status] of cases) {
    const res = await authed(t.slug, token, "/api/me");
    expect(res.status, `${label}: ${res.text}`).toBe(status);
    if (status === 401) expect(res.json.error.code).toBe("unauthorized");
  }
});
