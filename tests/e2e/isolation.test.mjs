// Each tenant is served from its own database only, and a binding wired to the wrong database is
// refused rather than served.

import { beforeAll, expect, test } from "vitest";
import { createTenant, request, setBindings, sql, waitFor } from "../helpers.mjs";

let a;
let b;
beforeAll(async () => {
  [a, b] = await Promise.all([createTenant(), createTenant()]);
  await sql(a.uuid, "INSERT INTO projects (name) VALUES ('a-one'), ('a-two')");
  await sql(b.uuid, "INSERT INTO projects (name) VALUES ('b-one')");
});

const names = async (host, headers) => {
  const res = await request(host, "/api/projects", { headers });
  expect(res.status, res.text).toBe(200);
  return res.json.projects.map((p) => p.name);
};

test("two tenants each see only their own rows", async () => {
  expect(await names(`${a.slug}.localhost`)).toEqual(["a-one", "a-two"]);
  expect(await names(`${b.slug}.localhost`)).toEqual(["b-one"]);
  expect(await names("localhost", { "x-tenant-id": a.slug })).toEqual(["a-one", "a-two"]);
  expect(await names("localhost", { "x-tenant-id": b.slug })).toEqual(["b-one"]);
});

test("pagination limit applies within the tenant", async () => {
  const res = await request(`${a.slug}.localhost`, "/api/projects?limit=1");
  expect(res.json.projects.map((p) => p.name)).toEqual(["a-one"]);
});

test("a binding that points at another tenant's database is refused, not served", async () => {
  const victim = await createTenant();
  await sql(victim.uuid, "INSERT INTO projects (name) VALUES ('victim-secret')");
  // Mis-wire: the victim's binding now points at tenant a's database.
  await setBindings(api_wire(victim.binding, a.uuid));
  await waitFor(async () => (await request(`${victim.slug}.localhost`, "/api/projects")).status !== 200, "the mis-wired binding to go live");
  const res = await request(`${victim.slug}.localhost`, "/api/projects");
  expect(res.status).toBe(503);
  expect(res.json.error.code).toBe("tenant_unavailable");
  expect(res.text).not.toContain("a-one");
  expect(res.headers["retry-after"]).toBe("5");
  // Wire it back: served again, with its own data.
  await setBindings(api_wire(victim.binding, victim.uuid));
  await waitFor(async () => (await request(`${victim.slug}.localhost`, "/api/projects")).status === 200, "the binding to be restored");
  expect(await names(`${victim.slug}.localhost`)).toEqual(["victim-secret"]);
});

function api_wire(binding, uuid) {
  return (bindings) => [...bindings.filter((x) => x.name !== binding), { type: "d1", name: binding, id: uuid }];
}
