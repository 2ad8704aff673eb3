// Which host answers what: the control plane on the apex and reserved subdomains, tenants on
// their subdomain (or X-Tenant-ID on the apex), JSON errors for everything else.

import { beforeAll, describe, expect, test } from "vitest";
import { readdirSync } from "node:fs";
import path from "node:path";
import { tenantMigrations } from "../../cloud/provision.mjs";
import { ROOT } from "../../cloud/stack.mjs";
import { createTenant, request } from "../helpers.mjs";

const controlMigrations = readdirSync(path.join(ROOT, "migrations", "control"))
  .filter((f) => f.endsWith(".sql"))
  .sort();

const bearer = (token) => ({ authorization: `Bearer ${token}` });

const expectJsonError = (res, status, code) => {
  expect(res.status, res.text).toBe(status);
  expect(res.headers["content-type"]).toMatch(/^application\/json/);
  expect(res.json.error.code).toBe(code);
  expect(typeof res.json.error.message).toBe("string");
};

describe("control plane", () => {
  test("GET /healthz reports the control-plane D1 reachable and migrated", async () => {
    for (const host of ["localhost", "www.localhost", "admin.localhost"]) {
      const res = await request(host, "/healthz");
      expect(res.status, host).toBe(200);
      expect(res.json).toEqual({
        status: "ok",
        control_plane: { reachable: true, migrated: true, applied: controlMigrations, pending: [] },
      });
    }
  });

  test("wrong method and unknown routes are JSON errors", async () => {
    const res = await request("localhost", "/healthz", { method: "POST", body: "{}" });
    expectJsonError(res, 405, "method_not_allowed");
    expect(res.headers.allow).toBe("GET");
    expectJsonError(await request("localhost", "/nope"), 404, "route_not_found");
  });
});

describe("tenant routing", () => {
  let tenant;
  beforeAll(async () => {
    tenant = await createTenant();
  });

  test("50 requests at once get 50 different request ids (a per-isolate prefix and a counter)", async () => {
    const answers = await Promise.all(
      Array.from({ length: 50 }, () => request(`${tenant.slug}.localhost`, "/api/tenant", { headers: bearer(tenant.token) })),
    );
    const ids = answers.map((r) => r.headers["x-request-id"]);
    expect(answers.every((r) => r.status === 200)).toBe(true);
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{32}$/);
    expect(new Set(ids).size).toBe(50);
  });

  test("a tenant answers on its subdomain, in any letter case", async () => {
    for (const host of [`${tenant.slug}.localhost`, `${tenant.slug.toUpperCase()}.LOCALHOST`]) {
      const res = await request(host, "/api/tenant", { headers: bearer(tenant.token) });
      expect(res.status, host).toBe(200);
      expect(res.json).toEqual({ tenant: tenant.slug, plan: "free", schema: tenantMigrations().map((m) => m.name) });
    }
  });

  test("X-Tenant-ID on the apex routes to the tenant; a disagreeing header is a 400", async () => {
    const viaHeader = await request("localhost", "/api/tenant", { headers: { "x-tenant-id": tenant.slug, ...bearer(tenant.token) } });
    expect(viaHeader.status).toBe(200);
    expect(viaHeader.json.tenant).toBe(tenant.slug);
    const agree = await request(`${tenant.slug}.localhost`, "/api/tenant", {
      headers: { "x-tenant-id": tenant.slug, ...bearer(tenant.token) },
    });
    expect(agree.status).toBe(200);
    expectJsonError(
      await request(`${tenant.slug}.localhost`, "/api/tenant", { headers: { "x-tenant-id": "other-tenant" } }),
      400,
      "tenant_conflict",
    );
    expectJsonError(await request("localhost", "/api/tenant", { headers: { "x-tenant-id": "Not A Slug" } }), 400, "invalid_tenant_header");
  });

  test("unknown tenants, malformed and foreign hosts get JSON 404/400", async () => {
    expectJsonError(await request("no-such-tenant.localhost", "/api/tenant"), 404, "tenant_not_found");
    expectJsonError(await request("ab.localhost", "/api/tenant"), 400, "invalid_tenant_host");
    expectJsonError(await request("bad--slug.localhost", "/api/tenant"), 400, "invalid_tenant_host");
    expectJsonError(await request("a.b.localhost", "/api/tenant"), 404, "unknown_host");
    expectJsonError(await request("example.org", "/api/tenant"), 404, "unknown_host");
    expectJsonError(await request("127.0.0.1", "/healthz"), 404, "unknown_host");
  });

  test("tenant routes: unknown path 404, wrong method 405, bad parameter 400", async () => {
    const host = `${tenant.slug}.localhost`;
    const headers = bearer(tenant.token);
    expectJsonError(await request(host, "/api/nope", { headers }), 404, "route_not_found");
    expectJsonError(await request(host, "/nope", { headers }), 404, "route_not_found");
    expectJsonError(await request(host, "/api/projects", { method: "PUT", headers }), 405, "method_not_allowed");
    for (const limit of ["0", "101", "abc", "-1", "1e3"]) {
      expectJsonError(await request(host, `/api/projects?limit=${limit}`, { headers }), 400, "invalid_parameter");
    }
    expectJsonError(await request(host, "/api/projects"), 401, "unauthorized");
  });
});
