// The admin API and the lifecycle under bursts of concurrent requests: every rule that guards a
// write holds when 10 to 50 requests arrive at once, checked afterwards from the control plane.

import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, describe, expect, test } from "vitest";
import { ADMIN_PASSWORD, admin, authed, createTenant, freshSlug, setFaults, sql, stack, waitFor, waitForStatus } from "../helpers.mjs";

/** Rows of `statement` on the control plane, read through the local cloud. */
async function control(statement, params = []) {
  return (await sql(stack.controlDatabaseId, statement, params))[0].results;
}

/** `n` copies of `make(i)` sent at once. */
function burst(n, make) {
  return Promise.all(Array.from({ length: n }, (_, i) => make(i)));
}

function expectNo5xx(responses) {
  const bad = responses.filter((r) => r.status >= 500);
  expect(bad.map((r) => `${r.status} ${r.text}`)).toEqual([]);
}

const createBody = (slug, extra = {}) => ({
  slug,
  name: `Tenant ${slug}`,
  admin: { email: `a@${slug}.test`, password: ADMIN_PASSWORD },
  ...extra,
});

describe("concurrent creates", () => {
  test("10 identical creates all join one create: no 409, one operation, one database", async () => {
    const slug = freshSlug("twin");
    const responses = await burst(10, () => admin("POST", "/v1/tenants", createBody(slug)));
    expectNo5xx(responses);
    expect(responses.map((r) => r.status).filter((s) => ![201, 202].includes(s))).toEqual([]);
    await waitForStatus(slug, "active");
    const ops = await control("SELECT kind, state FROM operations WHERE tenant_slug = ?", [slug]);
    expect(ops).toEqual([{ kind: "create", state: "succeeded" }]);
    const audits = await control("SELECT count(*) AS n FROM audit_log WHERE tenant_slug = ? AND action = 'tenant.create'", [slug]);
    expect(audits[0].n).toBe(1);
  });

  test("10 different creates of one slug: exactly one wins, the rest are 409 tenant_exists", async () => {
    const slug = freshSlug("rival");
    const responses = await burst(10, (i) => admin("POST", "/v1/tenants", createBody(slug, { name: `Rival ${i}` })));
    expectNo5xx(responses);
    const winners = responses.filter((r) => [201, 202].includes(r.status));
    expect(winners.length).toBe(1);
    expect(responses.filter((r) => r.status === 409).every((r) => r.json.error.code === "tenant_exists")).toBe(true);
    const tenant = await waitForStatus(slug, "active");
    expect(tenant.name).toBe(winners[0].json.tenant.name);
  });

  test("creates racing deletes: no 5xx, the tenant ends deleted, no open operation, no database left", async () => {
    for (let round = 0; round < 3; round++) {
      const slug = freshSlug("race");
      const create = admin("POST", "/v1/tenants", createBody(slug));
      await sleep(150 * round);
      const responses = [await create, ...(await burst(5, () => admin("DELETE", `/v1/tenants/${slug}`)))];
      expectNo5xx(responses);
      const [row] = await control("SELECT status FROM tenants WHERE slug = ?", [slug]);
      if (!row) continue; // the delete came before the tenant existed: 404s only
      await waitForStatus(slug, "deleted", 60_000);
      const open = await control("SELECT id FROM operations WHERE tenant_slug = ? AND state IN ('pending', 'running')", [slug]);
      expect(open).toEqual([]);
    }
    const res = await admin("POST", "/v1/reconcile");
    expect(res.status).toBe(200);
    expect(res.json.orphans.found.filter((n) => n.includes("race-"))).toEqual([]);
  });
});

describe("operator transitions are not the saga's", () => {
  afterEach(() => setFaults([]));

  test("PATCH status active on a provisioning tenant is refused; the create still finishes", async () => {
    const slug = freshSlug("early");
    // Held before its binding: the settings read fails until the faults are lifted.
    await setFaults([{ endpoint: "scripts.settings.get", kind: "error", status: 500 }]);
    const created = await admin("POST", "/v1/tenants", createBody(slug));
    expect(created.status).toBe(202);
    const early = await burst(10, () => admin("PATCH", `/v1/tenants/${slug}`, { status: "active" }));
    expectNo5xx(early);
    expect(early.map((r) => r.status)).toEqual(early.map(() => 409));
    expect(early[0].json.error.code).toBe("invalid_transition");
    const [row] = await control("SELECT status, bind_wanted FROM tenants WHERE slug = ?", [slug]);
    expect(row.status).toBe("provisioning");
    // Nor suspend: suspended is only for active tenants.
    expect((await admin("PATCH", `/v1/tenants/${slug}`, { status: "suspended" })).status).toBe(409);
    await setFaults([]);
    await waitForStatus(slug, "active");
    const [after] = await control("SELECT bind_wanted FROM tenants WHERE slug = ?", [slug]);
    expect(after.bind_wanted).toBe(1);
  });

  test("50 concurrent suspend/resume requests: no 5xx, the status is one of the two, one audit row per change", async () => {
    const t = await createTenant();
    const responses = await burst(50, (i) =>
      admin("PATCH", `/v1/tenants/${t.slug}`, i % 2 ? { status: "suspended", message: `m${i}` } : { status: "active" }),
    );
    expectNo5xx(responses);
    expect(responses.map((r) => r.status).filter((s) => s !== 200)).toEqual([]);
    const [row] = await control("SELECT status, bind_wanted FROM tenants WHERE slug = ?", [t.slug]);
    expect(["active", "suspended"]).toContain(row.status);
    expect(row.bind_wanted).toBe(1);
    const audits = await control("SELECT count(*) AS n FROM audit_log WHERE tenant_slug = ? AND action = 'tenant.update'", [t.slug]);
    expect(audits[0].n).toBe(50);
  });

  test("a deleted tenant cannot be resumed or renamed", async () => {
    const t = await createTenant();
    await admin("DELETE", `/v1/tenants/${t.slug}`);
    await waitForStatus(t.slug, "deleted");
    const responses = await burst(10, (i) => admin("PATCH", `/v1/tenants/${t.slug}`, i % 2 ? { status: "active" } : { name: "x" }));
    expect(responses.map((r) => r.status)).toEqual(responses.map(() => 404));
  });
});

describe("platform roles", () => {
  test("20 concurrent creates of one role name: one 201, the rest 409, one entity version bump", async () => {
    const name = `burst_${Date.now().toString(36)}`;
    const [before] = await control("SELECT value FROM platform WHERE key = 'entity_version'");
    const responses = await burst(20, () => admin("POST", "/v1/roles", { name, permissions: ["projects:read"] }));
    expectNo5xx(responses);
    expect(responses.filter((r) => r.status === 201).length).toBe(1);
    expect(responses.filter((r) => r.status === 409).length).toBe(19);
    const [after] = await control("SELECT value FROM platform WHERE key = 'entity_version'");
    expect(Number(after.value) - Number(before.value)).toBeGreaterThanOrEqual(1);
    const audits = await control("SELECT count(*) AS n FROM audit_log WHERE action = 'role.create' AND detail LIKE ?", [`%${name}%`]);
    expect(audits[0].n).toBe(1);
    expect((await admin("DELETE", `/v1/roles/${name}`)).status).toBe(200);
    const again = await burst(5, () => admin("DELETE", `/v1/roles/${name}`));
    expect(again.map((r) => r.status)).toEqual([404, 404, 404, 404, 404]);
  });

  test("a platform role named like a tenant's own role never takes it over or deletes it", async () => {
    const t = await createTenant();
    const name = `shared_${Date.now().toString(36)}`;
    const own = await authed(t.slug, t.token, "/api/roles", {
      method: "POST",
      body: { name, description: "the tenant's own", permissions: ["projects:read"] },
    });
    expect(own.status).toBe(201);
    expect((await admin("POST", "/v1/roles", { name, description: "the platform's", permissions: ["users:read"] })).status).toBe(201);
    const read = async () => (await authed(t.slug, t.token, "/api/roles")).json.roles.find((r) => r.name === name);
    await waitFor(async () => (await admin("POST", "/v1/migrations/apply", {})).status === 200, "a sync pass");
    expect(await read()).toMatchObject({ description: "the tenant's own", is_system: false, permissions: ["projects:read"] });
    expect((await admin("DELETE", `/v1/roles/${name}`)).status).toBe(200);
    await admin("POST", "/v1/migrations/apply", {});
    expect(await read()).toMatchObject({ description: "the tenant's own", is_system: false });
  });
});

describe("bodies", () => {
  test("unknown keys inside admin {} are refused like unknown top-level keys", async () => {
    const slug = freshSlug("keys");
    const res = await admin(
      "POST",
      "/v1/tenants",
      createBody(slug, { admin: { email: `a@${slug}.test`, password: ADMIN_PASSWORD, role: "owner" } }),
    );
    expect(res.status).toBe(422);
    expect(res.json.error.fields).toEqual({ "admin.role": "is not a known field" });
    expect((await admin("GET", `/v1/tenants/${slug}`)).status).toBe(404);
  });
});

describe("the admin API's other write routes under bursts", () => {
  test("20 concurrent settings PATCHes with different keys: all land, no 5xx", async () => {
    const tag = Date.now().toString(36);
    const responses = await burst(20, (i) => admin("PATCH", "/v1/settings", { [`burst_${tag}_${i}`]: i }));
    expectNo5xx(responses);
    expect(responses.map((r) => r.status)).toEqual(responses.map(() => 200));
    const settings = (await admin("GET", "/v1/settings")).json.settings;
    for (let i = 0; i < 20; i++) expect(settings[`burst_${tag}_${i}`]).toBe(i);
    await admin("PATCH", "/v1/settings", Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`burst_${tag}_${i}`, null])));
  });

  test("20 concurrent PATCHes of one platform role: no 5xx, the role ends as one of them", async () => {
    const name = `patched_${Date.now().toString(36)}`;
    expect((await admin("POST", "/v1/roles", { name })).status).toBe(201);
    const responses = await burst(20, (i) => admin("PATCH", `/v1/roles/${name}`, { description: `d${i}` }));
    expectNo5xx(responses);
    expect(responses.map((r) => r.status)).toEqual(responses.map(() => 200));
    const role = (await admin("GET", `/v1/roles/${name}`)).json.role;
    expect(responses.map((r) => r.json.role.description)).toContain(role.description);
    await admin("DELETE", `/v1/roles/${name}`);
  });

  test("maintenance on and off, migration passes and reconciler runs, all at once: no 5xx", async () => {
    const responses = await burst(30, (i) => {
      switch (i % 5) {
        case 0:
          return admin("PUT", "/v1/maintenance", { message: `window ${i}` });
        case 1:
          return admin("DELETE", "/v1/maintenance");
        case 2:
          return admin("POST", "/v1/migrations/apply", { limit: 20 });
        case 3:
          return admin("POST", "/v1/reconcile");
        default:
          return admin("GET", "/v1/migrations/status");
      }
    });
    expectNo5xx(responses);
    expect(responses.filter((r) => r.status !== 200).map((r) => `${r.status} ${r.text}`)).toEqual([]);
    expect((await admin("DELETE", "/v1/maintenance")).status).toBe(200);
  });
});
