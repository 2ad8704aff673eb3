// Settings PATCHes on the local cloud really change the running Worker's bindings, and data
// survives the workerd restart that takes.

import { expect, test } from "vitest";
import { api, dropRaw, freshSlug, provisionRaw, request, setBindings, sql, waitFor } from "../helpers.mjs";

test("adding a binding makes a new tenant answer, removing it makes it unknown, data persists", async () => {
  const slug = freshSlug("bind");
  const host = `${slug}.localhost`;
  const db = await provisionRaw(slug, { bind: false });
  await sql(db.uuid, "INSERT INTO projects (name) VALUES ('kept')");
  expect((await request(host, "/api/tenant")).status).toBe(404);

  await setBindings((bindings) => [...bindings, { type: "d1", name: db.binding, id: db.uuid }]);
  await waitFor(async () => (await request(host, "/api/tenant")).status === 200, "the new binding to go live");
  expect((await request(host, "/api/projects")).json.projects.map((p) => p.name)).toEqual(["kept"]);

  const settings = (await api("GET", "/workers/scripts/tenantry/settings")).result.bindings;
  expect(settings).toContainEqual({ type: "d1", name: db.binding, id: db.uuid, database_id: db.uuid });
  expect(settings.map((b) => b.name)).toEqual(expect.arrayContaining(["APEX", "D1_NAME_PREFIX", "CONTROL_DB"]));

  await setBindings((bindings) => bindings.filter((b) => b.name !== db.binding));
  await waitFor(async () => (await request(host, "/api/tenant")).status === 404, "the binding to be removed");
  // Other tenants and the control plane kept their bindings through both restarts.
  expect((await request("localhost", "/healthz")).status).toBe(200);

  // The database outlived both restarts with its data.
  const rows = await sql(db.uuid, "SELECT name FROM projects");
  expect(rows[0].results).toEqual([{ name: "kept" }]);
  await dropRaw(db);
});

test("requests in flight during a binding change are not lost", async () => {
  const slug = freshSlug("flight");
  const db = await provisionRaw(slug, { bind: false });
  const load = Array.from({ length: 40 }, (_, i) =>
    new Promise((r) => setTimeout(r, i * 10)).then(() => request("localhost", "/healthz")),
  );
  await setBindings((bindings) => [...bindings, { type: "d1", name: db.binding, id: db.uuid }]);
  const results = await Promise.all(load);
  expect(results.map((r) => r.status)).toEqual(results.map(() => 200));
  await dropRaw(db);
});
