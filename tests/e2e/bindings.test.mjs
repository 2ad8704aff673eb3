// Settings PATCHes on the local cloud really change the running Worker's bindings, and data
// survives the workerd restart that takes.

import { expect, test } from "vitest";
import { api, authed, createTenant, freshSlug, request, setBindings, sql, waitFor } from "../helpers.mjs";

test("removing a tenant's binding makes it unavailable; adding it back serves it again, data intact", async () => {
  const { slug, uuid, binding, token } = await createTenant();
  await sql(uuid, "INSERT INTO projects (name) VALUES ('kept')");
  const names = async () => (await authed(slug, token, "/api/projects")).json.projects.map((p) => p.name);
  expect(await names()).toEqual(["kept"]);

  await setBindings((bindings) => bindings.filter((b) => b.name !== binding));
  await waitFor(async () => (await authed(slug, token, "/api/projects")).status === 503, "the binding to be removed");
  const gone = await authed(slug, token, "/api/projects");
  expect(gone.json.error.code).toBe("tenant_unavailable");
  expect(gone.headers["retry-after"]).toBe("5");
  // Other tenants and the control plane kept their bindings through the restart.
  expect((await request("localhost", "/healthz")).status).toBe(200);

  await setBindings((bindings) => [...bindings, { type: "d1", name: binding, id: uuid }]);
  await waitFor(async () => (await authed(slug, token, "/api/projects")).status === 200, "the binding to come back");
  expect(await names()).toEqual(["kept"]);
  const settings = (await api("GET", "/workers/scripts/tenantry/settings")).result.bindings;
  expect(settings).toContainEqual({ type: "d1", name: binding, id: uuid, database_id: uuid });
});

test("requests in flight during a binding change are not lost", async () => {
  const scratch = (await api("POST", "/d1/database", { name: `scratch-${freshSlug("f")}` })).result;
  const name = `SCRATCH_${scratch.uuid.slice(0, 8)}`;
  const load = Array.from({ length: 40 }, (_, i) =>
    new Promise((r) => setTimeout(r, i * 10)).then(() => request("localhost", "/healthz")),
  );
  await setBindings((bindings) => [...bindings, { type: "d1", name, id: scratch.uuid }]);
  const results = await Promise.all(load);
  expect(results.map((r) => r.status)).toEqual(results.map(() => 200));
  await setBindings((bindings) => bindings.filter((b) => b.name !== name));
  await api("DELETE", `/d1/database/${scratch.uuid}`);
});
