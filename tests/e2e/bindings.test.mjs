// Settings PATCHes on the local cloud really change the running Worker's bindings, and data
// survives the workerd restart that takes.

import { setTimeout as sleep } from "node:timers/promises";
import { expect, test } from "vitest";
import { api, authed, createTenant, freshSlug, request, setBindings, sql, tenantBindings, waitFor } from "../helpers.mjs";

test("a removed tenant binding makes the tenant unavailable (503), and the Worker puts it back itself, data intact", async () => {
  const { slug, uuid, binding, token, tenant } = await createTenant();
  expect(tenant.served_from).toBe(tenant.host); // on its binding host
  await sql(uuid, "INSERT INTO projects (name) VALUES ('kept')");
  const names = async () => (await authed(slug, token, "/api/projects")).json.projects.map((p) => p.name);
  expect(await names()).toEqual(["kept"]);

  // What a bare `wrangler deploy` or a hand-edited binding set does.
  await setBindings((bindings) => bindings.filter((b) => b.name !== binding), tenant.host);
  const seen = [];
  await waitFor(async () => {
    const res = await authed(slug, token, "/api/projects");
    seen.push(res.status);
    if (res.status === 503) {
      expect(res.json.error.code).toBe("tenant_unavailable");
      expect(res.headers["retry-after"]).toBe("5");
    } else expect(res.status).toBe(200);
    return seen.includes(503) && res.status === 200;
  }, "the binding to be missing, then healed");
  // Other tenants and the control plane kept their bindings through the restarts.
  expect((await request("localhost", "/healthz")).status).toBe(200);
  expect(await names()).toEqual(["kept"]);
  expect((await tenantBindings()).filter((b) => b.name === binding)).toEqual([{ script: tenant.host, name: binding, id: uuid }]);
});

test("requests in flight during a binding change are not lost", async () => {
  const scratch = (await api("POST", "/d1/database", { name: `scratch-${freshSlug("f")}` })).result;
  const name = `SCRATCH_${scratch.uuid.slice(0, 8)}`;
  const load = Array.from({ length: 40 }, (_, i) => sleep(i * 10).then(() => request("localhost", "/healthz")));
  await setBindings((bindings) => [...bindings, { type: "d1", name, id: scratch.uuid }]);
  const results = await Promise.all(load);
  expect(results.map((r) => r.status)).toEqual(results.map(() => 200));
  await setBindings((bindings) => bindings.filter((b) => b.name !== name));
  await api("DELETE", `/d1/database/${scratch.uuid}`);
});
