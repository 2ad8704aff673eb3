// Workers for Platforms in the local cloud, on a local cloud of its own (no tenantry Worker; a
// binding limit of 3 so the limit can be reached): dispatch namespaces and their errors, scripts
// uploaded into a namespace (details, list, settings, delete with force), the binding limit, a
// Worker reaching namespace scripts through a `dispatch_namespace` binding (and a missing one
// failing as on Cloudflare), a restarted cloud still running them, and the real wrangler CLI
// (`dispatch-namespace create|list|get|delete`, `deploy` with `[[dispatch_namespaces]]`, and
// `deploy --dispatch-namespace`).

import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, test, vi } from "vitest";
import { NotDeployed } from "../cloud/runtime.mjs";
import { LOCAL_TOKEN, startCloud, uploadScript, wrangler } from "../cloud/stack.mjs";

const MAX_BINDINGS = 3;

let stateDir;
/** @type {Awaited<ReturnType<typeof startCloud>>} */
let cloud;

const start = () => startCloud({ stateDir, poolSize: 8, maxBindingsPerScript: MAX_BINDINGS, entry: "front" });

beforeAll(async () => {
  stateDir = await mkdtemp(path.join(os.tmpdir(), "tenantry-dispatch-"));
  cloud = await start();
}, 120_000);

afterAll(async () => {
  await cloud?.stop();
  await rm(stateDir, { recursive: true, force: true });
});

/** A call answering `{ status, body }` whatever the status. */
async function call(method, route, body) {
  const res = await cloud.api(method, route, body, { raw: true });
  return { status: res.status, body: /** @type {any} */ (await res.json()) };
}

/** Expects a failure envelope with `status` and `code`; returns its message. */
async function failure(promise, status, code) {
  const { status: got, body } = await promise;
  expect(got, JSON.stringify(body)).toBe(status);
  expect(body).toMatchObject({ success: false, result: null });
  expect(body.errors[0].code).toBe(code);
  return body.errors[0].message;
}

/** Uploads a one-module script to `route` (see `uploadScript`). */
const upload = (route, source, bindings = [], metadata = {}) => uploadScript(cloud.cloudUrl, route, source, { bindings, metadata });

/** A settings PATCH (multipart `settings` part) answering `{ status, body }`. */
async function patchSettings(route, bindings) {
  const res = await cloud.api("PATCH", route, { bindings }, { multipart: true, raw: true });
  return { status: res.status, body: /** @type {any} */ (await res.json()) };
}

const newDb = async (name) => (await cloud.api("POST", "/d1/database", { name })).result.uuid;
const ns = (name) => `/workers/dispatch/namespaces/${name}`;

/** A namespace script: answers with its name, what its D1 binding reads, and its env's keys. */
const hostSource = (name) => `export default { async fetch(req, env) {
  const n = env.DB ? await env.DB.prepare("SELECT 41 + 1 AS n").first("n") : "-";
  return new Response("${name} " + n + " " + (env.GREETING ?? "-") + " [" + Object.keys(env).sort().join(",") + "]");
} };`;

/** An account script with a dispatch namespace binding NS: `?s=<script>` reaches that script. */
const FRONT = `export default { async fetch(req, env) {
  const name = new URL(req.url).searchParams.get("s");
  let fetcher;
  try { fetcher = env.NS.get(name); } catch (e) { return new Response("get threw: " + e.message); }
  try { return new Response(env.NS.constructor.name + ": " + await (await fetcher.fetch(req)).text()); }
  catch (e) { return new Response("fetch rejected: " + e.message, { status: 404 }); }
} };`;

const front = async (script) => (await cloud.runtime.dispatchTo("front", `http://any/?s=${script}`)).body.toString();

describe("dispatch namespaces", () => {
  test("create, list, get, duplicate (400), bad name (400), unknown (404), delete", async () => {
    const created = await cloud.api("POST", "/workers/dispatch/namespaces", { name: "crud-ns" });
    expect(created).toMatchObject({ success: true, errors: [], messages: [] });
    expect(created.result).toMatchObject({ namespace_name: "crud-ns", script_count: 0, trusted_workers: false });
    expect(created.result.namespace_id).toMatch(/^[0-9a-f-]{36}$/);
    for (const field of ["created_on", "modified_on"]) expect(Date.parse(created.result[field])).not.toBeNaN();
    for (const field of ["created_by", "modified_by"]) expect(created.result[field]).toMatch(/^[0-9a-f]{32}$/);

    const message = await failure(call("POST", "/workers/dispatch/namespaces", { name: "crud-ns" }), 400, 10021);
    expect(message).toMatch(/already exists/);
    await failure(call("POST", "/workers/dispatch/namespaces", { name: "has space" }), 400, 7400);
    await failure(call("POST", "/workers/dispatch/namespaces", {}), 400, 7400);

    const listed = await cloud.api("GET", "/workers/dispatch/namespaces?page=1");
    expect(listed.result.map((n) => n.namespace_name)).toContain("crud-ns");
    expect(listed.result_info).toMatchObject({ page: 1, total_count: listed.result.length });
    expect((await cloud.api("GET", ns("crud-ns"))).result).toEqual(created.result);

    await failure(call("GET", ns("nope")), 404, 10007);
    await failure(call("DELETE", ns("nope")), 404, 10007);
    await failure(call("GET", `${ns("nope")}/scripts`), 404, 10007);
    await failure(upload(`${ns("nope")}/scripts/x`, hostSource("x")), 404, 10007);
    expect((await cloud.api("DELETE", ns("crud-ns"))).result).toBeNull();
    await failure(call("GET", ns("crud-ns")), 404, 10007);
    // The routes are counted and can be failed like the others.
    expect(cloud.cloud.requests["dispatch.namespaces.create"]).toBeGreaterThanOrEqual(3);
    const faults = await fetch(`${cloud.cloudUrl}/__cloud/faults`, {
      method: "POST",
      headers: { authorization: `Bearer ${LOCAL_TOKEN}` },
      body: JSON.stringify({ rules: [{ endpoint: "dispatch.namespaces.list", kind: "error", status: 503, times: 1 }] }),
    });
    expect(faults.status).toBe(200);
    await failure(call("GET", "/workers/dispatch/namespaces"), 503, 7500);
    expect((await call("GET", "/workers/dispatch/namespaces")).status).toBe(200);
  });
});

describe("scripts in a namespace", () => {
  test("upload, details, list (with tags), settings GET/PATCH, delete (force when bound)", async () => {
    await cloud.api("POST", "/workers/dispatch/namespaces", { name: "scripts-ns" });
    const db = await newDb("scripts-db");
    const up = await upload(`${ns("scripts-ns")}/scripts/host-1`, hostSource("host-1"), [{ type: "d1", name: "DB", id: db }], {
      tags: ["tenant-a"],
    });
    expect(up.status, JSON.stringify(up.body)).toBe(200);
    expect(up.body.result).toMatchObject({ id: "host-1", has_modules: true, handlers: ["fetch", "scheduled"] });
    expect(up.body.result.etag).toMatch(/^[0-9a-f]{64}$/);

    const details = (await cloud.api("GET", `${ns("scripts-ns")}/scripts/host-1`)).result;
    expect(details).toMatchObject({ dispatch_namespace: "scripts-ns", script: { id: "host-1", etag: up.body.result.etag } });
    expect(typeof details.created_on).toBe("string");
    expect((await cloud.api("GET", ns("scripts-ns"))).result.script_count).toBe(1);

    // Not an account script: the account's routes do not see it.
    await failure(call("GET", "/workers/scripts/host-1/settings"), 404, 10007);
    expect((await cloud.api("GET", "/workers/scripts")).result.map((s) => s.id)).not.toContain("host-1");

    const settingsRoute = `${ns("scripts-ns")}/scripts/host-1/settings`;
    const before = (await cloud.api("GET", settingsRoute)).result;
    expect(before.bindings).toEqual([{ type: "d1", name: "DB", id: db, database_id: db }]);
    const patched = await patchSettings(settingsRoute, [
      { type: "inherit", name: "DB" },
      { type: "plain_text", name: "GREETING", text: "hi" },
    ]);
    expect(patched.status, JSON.stringify(patched.body)).toBe(200);
    expect((await cloud.api("GET", settingsRoute)).result.bindings.map((b) => b.name)).toEqual(["DB", "GREETING"]);
    // The list replaces the set; inheriting what is not there fails.
    await failure(patchSettings(settingsRoute, [{ type: "inherit", name: "NEVER" }]), 400, 10057);
    await failure(patchSettings(settingsRoute, [{ type: "d1", name: "X", id: "00000000-0000-0000-0000-000000000000" }]), 400, 10021);

    // A second script binds host-1 as a service (same namespace): host-1 is deleted only with force.
    const host2 = await upload(`${ns("scripts-ns")}/scripts/host-2`, hostSource("host-2"), [
      { type: "service", name: "ONE", service: "host-1" },
    ]);
    expect(host2.status, JSON.stringify(host2.body)).toBe(200);
    // ...and a service binding names a script of its own namespace, not of the account.
    await failure(
      upload(`${ns("scripts-ns")}/scripts/host-3`, hostSource("h"), [{ type: "service", name: "F", service: "front" }]),
      400,
      10021,
    );

    const listed = (await cloud.api("GET", `${ns("scripts-ns")}/scripts`)).result;
    expect(listed.map((s) => s.script.id).sort()).toEqual(["host-1", "host-2"]);
    expect(listed[0]).toMatchObject({ dispatch_namespace: "scripts-ns" });
    expect((await cloud.api("GET", `${ns("scripts-ns")}/scripts?tags=tenant-a:yes`)).result.map((s) => s.script.id)).toEqual(["host-1"]);
    expect((await cloud.api("GET", `${ns("scripts-ns")}/scripts?tags=tenant-a:no`)).result.map((s) => s.script.id)).toEqual(["host-2"]);
    await failure(call("GET", `${ns("scripts-ns")}/scripts?tags=tenant-a:maybe`), 400, 7400);

    await failure(call("DELETE", `${ns("scripts-ns")}/scripts/host-1`), 400, 10064);
    expect((await cloud.api("DELETE", `${ns("scripts-ns")}/scripts/host-1?force=true`)).result).toBeNull();
    // A script missing from a namespace: 10092, which wrangler deploy --dispatch-namespace expects.
    await failure(call("GET", `${ns("scripts-ns")}/scripts/host-1`), 404, 10092);
    await failure(call("GET", settingsRoute), 404, 10092);
    await failure(call("DELETE", `${ns("scripts-ns")}/scripts/host-1`), 404, 10092);
    expect((await cloud.api("DELETE", `${ns("scripts-ns")}/scripts/host-2`)).result).toBeNull();
    await cloud.api("DELETE", ns("scripts-ns"));
  });

  test(`the binding limit (${MAX_BINDINGS} D1 bindings here): an upload or PATCH past it is refused (400/10021) and changes nothing`, async () => {
    await cloud.api("POST", "/workers/dispatch/namespaces", { name: "limit-ns" });
    const ids = [];
    for (let i = 0; i <= MAX_BINDINGS; i++) ids.push(await newDb(`limit-db-${i}`));
    const d1 = (n) => ids.slice(0, n).map((id, i) => ({ type: "d1", name: `DB_${i}`, id }));

    const ok = await upload(`${ns("limit-ns")}/scripts/full`, hostSource("full"), d1(MAX_BINDINGS));
    expect(ok.status, JSON.stringify(ok.body)).toBe(200);
    const route = `${ns("limit-ns")}/scripts/full`;
    const before = (await cloud.api("GET", route)).result;
    const settingsBefore = (await cloud.api("GET", `${route}/settings`)).result;

    const message = await failure(patchSettings(`${route}/settings`, d1(MAX_BINDINGS + 1)), 400, 10021);
    expect(message).toMatch(/too large/);
    // Inheriting every binding and adding one more is the same count.
    await failure(
      patchSettings(`${route}/settings`, [
        ...d1(MAX_BINDINGS).map((b) => ({ type: "inherit", name: b.name })),
        d1(MAX_BINDINGS + 1).at(-1),
      ]),
      400,
      10021,
    );
    await failure(upload(route, hostSource("full"), d1(MAX_BINDINGS + 1)), 400, 10021);
    expect((await cloud.api("GET", route)).result).toEqual(before);
    expect((await cloud.api("GET", `${route}/settings`)).result).toEqual(settingsBefore);

    // Other bindings do not count; account scripts have the same limit.
    const mixed = await patchSettings(`${route}/settings`, [...d1(MAX_BINDINGS), { type: "plain_text", name: "T", text: "t" }]);
    expect(mixed.status, JSON.stringify(mixed.body)).toBe(200);
    await failure(upload("/workers/scripts/too-many", hostSource("x"), d1(MAX_BINDINGS + 1)), 400, 10021);
    await failure(call("GET", "/workers/scripts/too-many/settings"), 404, 10007);
    await cloud.api("DELETE", ns("limit-ns"));
  });
});

describe("dispatch_namespace binding", () => {
  test("get(name).fetch reaches the namespace script with its bindings; a missing one rejects with 'Worker not found'", async () => {
    await cloud.api("POST", "/workers/dispatch/namespaces", { name: "hosts" });
    const db = await newDb("hosts-db");
    expect((await upload(`${ns("hosts")}/scripts/host-1`, hostSource("host-1"), [{ type: "d1", name: "DB", id: db }])).status).toBe(200);
    expect((await upload(`${ns("hosts")}/scripts/host-2`, hostSource("host-2"))).status).toBe(200);
    const dangling = await upload("/workers/scripts/front", FRONT, [{ type: "dispatch_namespace", name: "NS", namespace: "nope" }]);
    expect(dangling.status).toBe(400);
    const up = await upload("/workers/scripts/front", FRONT, [{ type: "dispatch_namespace", name: "NS", namespace: "hosts" }]);
    expect(up.status, JSON.stringify(up.body)).toBe(200);
    expect((await cloud.api("GET", "/workers/scripts/front/settings")).result.bindings).toEqual([
      { type: "dispatch_namespace", name: "NS", namespace: "hosts" },
    ]);

    await vi.waitFor(async () => expect(await front("host-1")).toBe("DynamicDispatcher: host-1 42 - [DB]"), { timeout: 15_000 });
    // A namespace script sees only its own bindings: host-2 has none, and nothing of the account.
    expect(await front("host-2")).toBe("DynamicDispatcher: host-2 - - []");
    expect(await front("nope")).toBe("fetch rejected: Worker not found.");
    // Not reachable as an account script, nor from the front door.
    await expect(cloud.runtime.dispatchTo("host-1", "http://any/")).rejects.toBeInstanceOf(NotDeployed);
    expect((await cloud.runtime.dispatch("http://any/?s=host-1")).body.toString()).toBe("DynamicDispatcher: host-1 42 - [DB]");

    // A settings change of a namespace script serves after the (drained) restart.
    await patchSettings(`${ns("hosts")}/scripts/host-1/settings`, [
      { type: "inherit", name: "DB" },
      { type: "plain_text", name: "GREETING", text: "hello" },
    ]);
    await vi.waitFor(async () => expect(await front("host-1")).toBe("DynamicDispatcher: host-1 42 hello [DB,GREETING]"), {
      timeout: 15_000,
    });

    // A deleted script is not found any more; the others still are.
    await cloud.api("DELETE", `${ns("hosts")}/scripts/host-2`);
    await vi.waitFor(async () => expect(await front("host-2")).toBe("fetch rejected: Worker not found."), { timeout: 15_000 });
  });

  test("a restarted local cloud still runs the namespace scripts behind the binding", async () => {
    await cloud.stop();
    cloud = await start();
    expect(await front("host-1")).toBe("DynamicDispatcher: host-1 42 hello [DB,GREETING]");
    expect((await cloud.api("GET", `${ns("hosts")}/scripts`)).result.map((s) => s.script.id)).toEqual(["host-1"]);
  });
});

describe("the real wrangler CLI", () => {
  let cwd;
  beforeAll(async () => {
    cwd = await mkdtemp(path.join(os.tmpdir(), "tenantry-wrangler-dispatch-"));
  });
  afterAll(() => rm(cwd, { recursive: true, force: true }));

  const run = async (...args) => {
    const out = await wrangler(args, cloud.cloudUrl, { cwd });
    expect(out.code, `wrangler ${args.join(" ")}\n${out.stdout}\n${out.stderr}`).toBe(0);
    return out.stdout;
  };

  test("dispatch-namespace create, list, get, delete; deploy with [[dispatch_namespaces]] (first and later deploys); deploy --dispatch-namespace", async () => {
    const created = await run("dispatch-namespace", "create", "tenantry-hosts");
    const id = (await cloud.api("GET", ns("tenantry-hosts"))).result.namespace_id;
    expect(created).toContain(`Created dispatch namespace "tenantry-hosts" with ID "${id}"`);
    expect(await run("dispatch-namespace", "list")).toContain("tenantry-hosts");
    expect(await run("dispatch-namespace", "get", "tenantry-hosts")).toContain(id);
    const again = await wrangler(["dispatch-namespace", "create", "tenantry-hosts"], cloud.cloudUrl, { cwd });
    expect(again.code).not.toBe(0);
    expect(`${again.stdout}${again.stderr}`).toMatch(/already exists/);

    expect((await upload(`${ns("tenantry-hosts")}/scripts/tenantry-host-0001`, hostSource("tenantry-host-0001"))).status).toBe(200);
    await writeFile(
      path.join(cwd, "wrangler.toml"),
      'name = "wr-front"\nmain = "index.js"\ncompatibility_date = "2025-06-01"\n\n[[dispatch_namespaces]]\nbinding = "HOSTS_DISPATCHER"\nnamespace = "tenantry-hosts"\n',
    );
    await writeFile(
      path.join(cwd, "index.js"),
      'export default { async fetch(req, env) { return env.HOSTS_DISPATCHER.get(new URL(req.url).searchParams.get("s")).fetch(req); } };\n',
    );
    for (const round of [1, 2]) {
      await run("deploy");
      expect((await cloud.api("GET", "/workers/scripts/wr-front/settings")).result.bindings, `deploy ${round}`).toEqual([
        { type: "dispatch_namespace", name: "HOSTS_DISPATCHER", namespace: "tenantry-hosts" },
      ]);
      await vi.waitFor(
        async () =>
          expect((await cloud.runtime.dispatchTo("wr-front", "http://any/?s=tenantry-host-0001")).body.toString()).toBe(
            "tenantry-host-0001 - - []",
          ),
        { timeout: 15_000 },
      );
    }

    // A user Worker deployed into the namespace by wrangler (its first deploy, then a second).
    const host = path.join(cwd, "host");
    await mkdir(host);
    await writeFile(
      path.join(host, "wrangler.toml"),
      'name = "tenantry-host-0002"\nmain = "index.js"\ncompatibility_date = "2025-06-01"\n',
    );
    await writeFile(path.join(host, "index.js"), hostSource("tenantry-host-0002"));
    for (let i = 0; i < 2; i++) {
      const out = await wrangler(["deploy", "--dispatch-namespace", "tenantry-hosts"], cloud.cloudUrl, { cwd: host });
      expect(out.code, out.stdout + out.stderr).toBe(0);
    }
    await vi.waitFor(
      async () =>
        expect((await cloud.runtime.dispatchTo("wr-front", "http://any/?s=tenantry-host-0002")).body.toString()).toBe(
          "tenantry-host-0002 - - []",
        ),
      { timeout: 15_000 },
    );
    expect((await cloud.api("GET", `${ns("tenantry-hosts")}/scripts`)).result.map((s) => s.script.id).sort()).toEqual([
      "tenantry-host-0001",
      "tenantry-host-0002",
    ]);

    await run("dispatch-namespace", "delete", "tenantry-hosts");
    await failure(call("GET", ns("tenantry-hosts")), 404, 10007);
  }, 120_000);
});
