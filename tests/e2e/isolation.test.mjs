// Each tenant is served from its own database only, and a binding wired to the wrong database is
// refused rather than served.

import { beforeAll, expect, test } from "vitest";
import { authed, createTenant, request, setBindings, sql, waitFor } from "../helpers.mjs";

let a;
let b;
beforeAll(async () => {
  [a, b] = await Promise.all([createTenant(), createTenant()]);
  await sql(a.uuid, "INSERT INTO projects (name) VALUES ('a-one'), ('a-two')");
  await sql(b.uuid, "INSERT INTO projects (name) VALUES ('b-one')");
});

const names = async (host, token, headers = {}) => {
  const res = await request(host, "/api/projects", { headers: { authorization: `Bearer ${token}`, ...headers } });
  expect(res.status, res.text).toBe(200);
  return res.json.projects.map((p) => p.name);
};

test("two tenants each see only their own rows", async () => {
  expect(await names(`${a.slug}.localhost`, a.token)).toEqual(["a-one", "a-two"]);
  expect(await names(`${b.slug}.localhost`, b.token)).toEqual(["b-one"]);
  expect(await names("localhost", a.token, { "x-tenant-id": a.slug })).toEqual(["a-one", "a-two"]);
  expect(await names("localhost", b.token, { "x-tenant-id": b.slug })).toEqual(["b-one"]);
});

test("pagination limit applies within the tenant", async () => {
  const res = await authed(a.slug, a.token, "/api/projects?limit=1");
  expect(res.json.projects.map((p) => p.name)).toEqual(["a-one"]);
  expect(res.json.next_cursor).toBeTruthy();
  const rest = await authed(a.slug, a.token, `/api/projects?limit=1&cursor=${res.json.next_cursor}`);
  expect(rest.json.projects.map((p) => p.name)).toEqual(["a-two"]);
});

test("a binding that points at another tenant's database is refused, not served", async () => {
  const victim = await createTenant();
  await sql(victim.uuid, "INSERT INTO projects (name) VALUES ('victim-secret')");
  // Mis-wire: the victim's binding (on its host) now points at tenant a's database.
  await setBindings(api_wire(victim.binding, a.uuid), victim.tenant.host);
  await waitFor(async () => (await authed(victim.slug, victim.token, "/api/projects")).status !== 200, "the mis-wired binding to go live");
  const res = await authed(victim.slug, victim.token, "/api/projects");
  expect(res.status).toBe(503);
  expect(res.json.error.code).toBe("tenant_unavailable");
  expect(res.text).not.toContain("a-one");
  expect(res.headers["retry-after"]).toBe("5");
  // Wire it back: served again, with its own data.
  await setBindings(api_wire(victim.binding, victim.uuid), victim.tenant.host);
  await waitFor(async () => (await authed(victim.slug, victim.token, "/api/projects")).status === 200, "the binding to be restored");
  expect(await names(`${victim.slug}.localhost`, victim.token)).toEqual(["victim-secret"]);
});

function api_wire(binding, uuid) {
  return (bindings) => [...bindings.filter((x) => x.name !== binding), { type: "d1", name: binding, id: uuid }];
}
