// The deploy path, end to end with the real wrangler CLI against the local cloud's Workers
// scripts API, on a stack of its own (these tests replace the Worker that serves):
// - `npm run deploy` (scripts/deploy.mjs) with tenants present keeps every binding and every
//   tenant serving, and a tenant created while it runs is served afterwards;
// - a bare `wrangler deploy` of the main Worker from a wrangler.toml drops no tenant binding (they
//   live on binding hosts), and no tenant stops serving;
// - `wrangler secret put`, `versions list`, `deployments list` and `rollback` change what serves;
// - several scripts per account, with service bindings between them; a script that throws at
//   startup is refused and never replaces the one that serves.

import { spawn } from "node:child_process";
import { mkdtemp, readFile as readFileText, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { stringify } from "smol-toml";
import { beforeAll, describe, expect, test, vi } from "vitest";
import { hostRequest } from "../../cloud/client.mjs";
import { setBindings, settingsRoute, tenantBindings as tenantBindingsOf } from "../../cloud/provision.mjs";
import { ROOT, uploadScript, wrangler } from "../../cloud/stack.mjs";
import { hotBindingName, readWranglerToml } from "../../scripts/deploy.mjs";
import { ownStack } from "../own-stack.mjs";

const own = ownStack("deploy");
const { login, createTenant, serving, keepAsking } = own;
// Set by ownStack's beforeAll, read by the tests.
/** @type {typeof own.stack} */
let stack;
let admin;
let stateDir;
beforeAll(() => {
  ({ stack, admin, stateDir } = own);
});

/** Every tenant binding of the account: `script:NAME`, sorted (`main` or the binding host). */
const tenantBindings = async () => (await tenantBindingsOf(stack.api)).map((b) => `${b.script}:${b.name}`).sort();
const bindingName = (slug) => `TENANT_${slug.toUpperCase().replaceAll("-", "_")}`;
const versions = async () => (await stack.api("GET", "/workers/scripts/tenantry/versions")).result.items;
const deployedVersionId = async () =>
  (await stack.api("GET", "/workers/scripts/tenantry/deployments")).result.deployments[0].versions[0].version_id;

/**
 * `npm run deploy -- --target <the stack's target>`, as a child process.
 * @param {string} [targetFile] another target file
 */
function npmRunDeploy(targetFile = stack.targetFile) {
  return new Promise((resolve, reject) => {
    const child = spawn(
      path.join(ROOT, "node_modules", ".bin", "node"),
      [path.join(ROOT, "scripts", "deploy.mjs"), "--target", targetFile, "--message", "test deploy"],
      {
        cwd: ROOT,
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let output = "";
    child.stdout.on("data", (d) => (output += d));
    child.stderr.on("data", (d) => (output += d));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, output }));
  });
}

describe("npm run deploy", () => {
  test("with tenants present keeps every binding and every tenant serving; tenants created meanwhile are served afterwards", async () => {
    const slugs = ["dep-a", "dep-b", "dep-c"];
    for (const slug of slugs) await createTenant(slug);
    for (const slug of slugs) await serving(slug);
    const before = await versions();

    const stopAsking = keepAsking(slugs);
    const deploying = npmRunDeploy();
    await sleep(500); // wrangler is starting: create tenants while the deploy runs
    const during = ["dep-during", "dep-during-2", "dep-during-3", "dep-during-4", "dep-during-5"];
    await Promise.all(during.map((slug) => createTenant(slug)));
    const { code, output } = await deploying;
    const { failures, requests } = await stopAsking();

    expect(code, output).toBe(0);
    // Tenant bindings live on binding hosts: the main Worker has none to keep.
    expect(output).toMatch(/0 tenant bindings kept/);
    expect(requests).toBeGreaterThan(20);
    expect(failures).toEqual([]);
    // A new version from wrangler was deployed.
    const after = await versions();
    expect(after.length).toBeGreaterThan(before.length);
    expect(after.some((v) => v.metadata.source === "wrangler" && !before.some((b) => b.id === v.id))).toBe(true);

    for (const slug of during) await serving(slug);
    for (const slug of slugs) expect((await login(slug)).status).toBe(200);
    const bound = await tenantBindings();
    expect(bound.filter((b) => b.startsWith("main:"))).toEqual([]);
    expect(bound.map((b) => b.split(":")[1]).sort()).toEqual([...slugs, ...during].map(bindingName).sort());
  }, 180_000);
});

describe("hot tenants", () => {
  test("npm run deploy binds the busiest tenant on the main Worker by its database id: its reads skip its host, and after a restore to a new database the old binding is never read", async () => {
    const [hot, cold] = ["hot-a", "hot-cold"];
    for (const slug of [hot, cold]) await createTenant(slug);
    for (const slug of [hot, cold]) await serving(slug);
    const signedIn = await login(hot);
    let token = signedIn.json.token;
    const ask = (/** @type {string} */ pathname, opts = {}) =>
      hostRequest(own.port, `${hot}.localhost`, pathname, { ...opts, headers: { authorization: `Bearer ${token}` } });
    const projects = async () => {
      const res = await ask("/api/projects?limit=100");
      expect(res.status, res.text).toBe(200);
      return res.json.projects.map((/** @type {{ name: string }} */ p) => p.name).sort();
    };
    expect((await ask("/api/projects", { method: "POST", body: { name: "before" } })).status).toBe(201);
    // The busiest tenant of the account, once its usage is flushed (10 s after its first request).
    for (let i = 0; i < 40; i++) await Promise.all(Array.from({ length: 10 }, () => projects()));
    await vi.waitFor(
      async () => {
        const usage = await admin("GET", `/v1/tenants/${hot}/usage`);
        expect(usage.json.current_month.api_calls.used).toBeGreaterThanOrEqual(400);
      },
      { timeout: 30_000, interval: 500 },
    );

    // One hot slot: the deploy binds hot-a's database on the main Worker, and nothing else.
    const target = JSON.parse(await readFileText(stack.targetFile, "utf8"));
    const hotTarget = path.join(stateDir, "target-hot.json");
    await writeFile(hotTarget, JSON.stringify({ ...target, vars: { ...target.vars, HOT_TENANTS: "1" } }), { mode: 0o600 });
    const { code, output } = await npmRunDeploy(hotTarget);
    expect(code, output).toBe(0);
    expect(output).toMatch(/1 hot tenants bound: hot-a\b/);
    await stack.runtime.settled();
    const record = (await admin("GET", `/v1/tenants/${hot}`)).json.tenant;
    const coldRecord = (await admin("GET", `/v1/tenants/${cold}`)).json.tenant;
    expect(record.host).toBeTruthy();
    const main = (await stack.api("GET", settingsRoute())).result.bindings;
    const hotBindings = main.filter((/** @type {{ type: string, name: string }} */ b) => b.type === "d1" && b.name.startsWith("HOT_"));
    expect(hotBindings).toEqual([
      expect.objectContaining({ type: "d1", name: hotBindingName(record.database.id), id: record.database.id }),
    ]);
    expect(main.some((/** @type {{ name: string }} */ b) => b.name === hotBindingName(coldRecord.database.id))).toBe(false);

    // Its host loses its binding: hot-a still reads and writes, through the main Worker's binding;
    // a tenant on a host without a hot binding would answer 503 here.
    await setBindings(stack.api, (bindings) => bindings.filter((b) => b.name !== "TENANT_HOT_A"), record.host);
    await stack.runtime.settled();
    expect(await projects()).toEqual(["before"]);
    expect((await ask("/api/projects", { method: "POST", body: { name: "through-hot" } })).status).toBe(201);
    expect((await admin("POST", "/v1/reconcile")).status).toBe(200);
    await stack.runtime.settled();

    // A restore from a backup moves hot-a to a new database. The main Worker's hot binding names
    // the old one (with `after` in it) and is never read again: hot-a serves the backup's data.
    const backup = await admin("POST", `/v1/tenants/${hot}/backups`);
    expect(backup.status, backup.text).toBe(201);
    expect((await ask("/api/projects", { method: "POST", body: { name: "after" } })).status).toBe(201);
    expect(await projects()).toEqual(["after", "before", "through-hot"]);
    const restore = await admin("POST", `/v1/tenants/${hot}/restore`, { backup: backup.json.backup.id });
    expect([200, 202], restore.text).toContain(restore.status);
    await vi.waitFor(
      async () => {
        await admin("GET", `/v1/tenants/${hot}`); // carries the restore forward
        const op = (await admin("GET", `/v1/tenants/${hot}/operations`)).json.operations[0];
        expect(op.state, JSON.stringify(op)).toBe("succeeded");
      },
      { timeout: 90_000, interval: 500 },
    );
    const restored = (await admin("GET", `/v1/tenants/${hot}`)).json.tenant;
    expect(restored.database.id).not.toBe(record.database.id);
    const again = (await stack.api("GET", settingsRoute())).result.bindings;
    expect(again.some((/** @type {{ name: string }} */ b) => b.name === hotBindingName(record.database.id))).toBe(true);
    await vi.waitFor(
      async () => {
        const res = await login(hot);
        expect(res.status, res.text).toBe(200);
        token = res.json.token;
      },
      { timeout: 30_000, interval: 500 },
    );
    expect(await projects()).toEqual(["before", "through-hot"]);
  }, 240_000);
});

describe("a bare wrangler deploy", () => {
  test("of the main Worker drops no tenant binding: every tenant keeps serving through it", async () => {
    // What a user's own wrangler.toml holds: the repository's, with their account's values.
    const project = await mkdtemp(path.join(os.tmpdir(), "tenantry-bare-"));
    const config = await readWranglerToml();
    delete config.build;
    config.main = path.join(ROOT, "build", "index.js");
    config.vars = { ...config.vars, ...stack.target.vars };
    config.d1_databases = config.d1_databases.map((d) => ({ ...d, database_id: stack.controlDatabase.uuid, migrations_dir: undefined }));
    await writeFile(path.join(project, "wrangler.toml"), stringify(config));
    try {
      const slugs = ["bare-a", "bare-b", "bare-c"];
      for (const slug of slugs) await createTenant(slug);
      for (const slug of slugs) await serving(slug);
      const before = await tenantBindings();
      const stopAsking = keepAsking(slugs);
      const out = await wrangler(["deploy"], stack.cloudUrl, { cwd: project });
      expect(out.code, out.stdout + out.stderr).toBe(0);
      await stack.runtime.settled(); // the new version serves
      await sleep(500);
      const { failures, requests } = await stopAsking();
      expect(requests).toBeGreaterThan(10);
      expect(failures).toEqual([]);
      expect(await tenantBindings()).toEqual(before);
      for (const slug of slugs) expect(before).toContainEqual(expect.stringMatching(new RegExp(`:${bindingName(slug)}$`)));
    } finally {
      await rm(project, { recursive: true, force: true });
    }
  }, 120_000);
});

describe("wrangler secret, versions, deployments, rollback", () => {
  test("secret put makes a version that serves; versions and deployments list it; rollback serves the old one", async () => {
    const asAdmin = (token) => admin("GET", "/v1/tenants?limit=1", undefined, { token });
    await createTenant("roll-a");
    await serving("roll-a");
    const oldVersion = await deployedVersionId();
    expect((await asAdmin(stack.adminToken)).status).toBe(200);

    const put = await wrangler(["secret", "put", "ADMIN_TOKEN", "--name", "tenantry"], stack.cloudUrl, {
      input: "a-rotated-admin-token\n",
      cwd: os.tmpdir(),
    });
    expect(put.code, put.stdout + put.stderr).toBe(0);
    const rotated = await deployedVersionId();
    expect(rotated).not.toBe(oldVersion);
    await vi.waitFor(async () => expect((await asAdmin("a-rotated-admin-token")).status).toBe(200), { timeout: 10_000 });
    expect((await asAdmin(stack.adminToken)).status).toBe(401);

    const list = await wrangler(["versions", "list", "--name", "tenantry", "--json"], stack.cloudUrl, { cwd: os.tmpdir() });
    expect(list.code, list.stderr).toBe(0);
    const listed = JSON.parse(list.stdout).map((v) => v.id);
    expect(listed).toContain(oldVersion);
    expect(listed).toContain(rotated);
    const deployments = await wrangler(["deployments", "list", "--name", "tenantry", "--json"], stack.cloudUrl, { cwd: os.tmpdir() });
    expect(deployments.code, deployments.stderr).toBe(0);
    expect(JSON.parse(deployments.stdout).at(-1).versions[0].version_id).toBe(rotated);

    // The secret differs between the two versions: the API refuses (10220) until forced;
    // wrangler asks, and -y answers yes.
    const rollback = await wrangler(["rollback", oldVersion, "--name", "tenantry", "-y", "--message", "test rollback"], stack.cloudUrl, {
      cwd: os.tmpdir(),
    });
    expect(rollback.code, rollback.stdout + rollback.stderr).toBe(0);
    expect(await deployedVersionId()).toBe(oldVersion);
    await vi.waitFor(async () => expect((await asAdmin(stack.adminToken)).status).toBe(200), { timeout: 10_000 });
    expect((await asAdmin("a-rotated-admin-token")).status).toBe(401);

    // After a rollback the latest version is not the deployed one: the API refuses binding
    // changes (10214) until the next deploy, which brings everything back.
    const patch = await stack.api("PATCH", "/workers/scripts/tenantry/settings", { bindings: [] }, { multipart: true, raw: true });
    expect(patch.status).toBe(400);
    expect((await patch.json()).errors[0].code).toBe(10214);
    const redeploy = await npmRunDeploy();
    expect(redeploy.code, redeploy.output).toBe(0);
    expect((await login("roll-a")).status).toBe(200);
  }, 180_000);
});

describe("a deploy killed half-way", () => {
  test("a version uploaded but never deployed: tenants keep serving, and new tenants are created and served through their host", async () => {
    await createTenant("half-a");
    await serving("half-a");
    // The first half of a deploy (what a deploy killed between its two calls leaves): a new
    // version, not deployed.
    const upload = await wrangler(["versions", "upload", "--config", path.join(stateDir, "wrangler.deploy.json")], stack.cloudUrl);
    expect(upload.code, upload.stdout + upload.stderr).toBe(0);
    const [latest] = await versions();
    expect(latest.id).not.toBe(await deployedVersionId());

    // The main Worker refuses binding changes now (10214), but tenant churn never changes it:
    // a new tenant is created, bound on its host and served all the same.
    await createTenant("half-b");
    await serving("half-b");
    expect((await login("half-a")).status).toBe(200);
    expect(latest.id).not.toBe(await deployedVersionId()); // the main Worker was not touched

    const redeploy = await npmRunDeploy();
    expect(redeploy.code, redeploy.output).toBe(0);
    await serving("half-b");
    expect((await login("half-a")).status).toBe(200);
  }, 120_000);
});

describe("a plain Worker project, with the wrangler commands a developer uses", () => {
  test("deploy, secret put / list / delete, versions upload / view / deploy, triggers deploy, deployments status, delete", async () => {
    const project = await mkdtemp(path.join(os.tmpdir(), "tenantry-hello-"));
    await writeFile(
      path.join(project, "wrangler.toml"),
      'name = "hello"\nmain = "index.js"\ncompatibility_date = "2025-06-01"\n[vars]\nGREETING = "hi"\n[triggers]\ncrons = ["0 * * * *"]\n',
    );
    await writeFile(
      path.join(project, "index.js"),
      'export default { fetch: (r, env) => new Response(env.GREETING + " " + (env.TOKEN ?? "-")), scheduled() {} };\n',
    );
    const run = async (args, input) => {
      const out = await wrangler(args, stack.cloudUrl, { cwd: project, input });
      expect(out.code, `wrangler ${args.join(" ")}\n${out.stdout}${out.stderr}`).toBe(0);
      return out.stdout;
    };
    const hello = async () => (await stack.runtime.dispatchTo("hello", "http://any/")).body.toString();
    try {
      await run(["deploy"]);
      await vi.waitFor(async () => expect(await hello()).toBe("hi -"), { timeout: 10_000 });
      await run(["secret", "put", "TOKEN"], "s3cret\n");
      await vi.waitFor(async () => expect(await hello()).toBe("hi s3cret"), { timeout: 10_000 });
      expect(JSON.parse(await run(["secret", "list"]))).toEqual([{ name: "TOKEN", type: "secret_text" }]);

      // A version uploaded, then deployed: it serves only once deployed.
      await writeFile(
        path.join(project, "wrangler.toml"),
        (await readFileText(path.join(project, "wrangler.toml"), "utf8")).replace('"hi"', '"hello"'),
      );
      const uploaded = /Worker Version ID: ([0-9a-f-]+)/.exec(await run(["versions", "upload", "--message", "v2"]))?.[1];
      expect(uploaded).toBeTruthy();
      expect(await hello()).toBe("hi s3cret");
      expect(await run(["versions", "view", uploaded])).toMatch(/TOKEN/);
      await run(["versions", "deploy", `${uploaded}@100`, "-y", "--message", "promote"]);
      await vi.waitFor(async () => expect(await hello()).toBe("hello s3cret"), { timeout: 10_000 });
      expect(await run(["deployments", "status"])).toContain(uploaded);
      await run(["triggers", "deploy"]);
      expect((await stack.api("GET", "/workers/scripts/hello/schedules")).result.schedules.map((x) => x.cron)).toEqual(["0 * * * *"]);

      await run(["secret", "delete", "TOKEN"]);
      await vi.waitFor(async () => expect(await hello()).toBe("hello -"), { timeout: 10_000 });
      await run(["delete"]);
      await vi.waitFor(async () => expect(stack.runtime.running.has("hello")).toBe(false), { timeout: 10_000 });
    } finally {
      await rm(project, { recursive: true, force: true });
    }
  }, 120_000);
});

describe("several scripts", () => {
  const upload = (name, source, bindings = []) =>
    uploadScript(stack.cloudUrl, `/workers/scripts/${name}`, source, { bindings, compatibilityDate: "2025-01-01" });
  const call = async (script) => {
    const res = await stack.runtime.dispatchTo(script, "http://any/");
    return { status: res.status, text: res.body.toString() };
  };

  test("each runs its deployed version with its own bindings; service bindings reach the other script", async () => {
    const echo = await upload("echo", `export default { fetch: (req, env) => new Response("echo says " + env.WORD) };`, [
      { type: "plain_text", name: "WORD", text: "hello" },
    ]);
    expect(echo.status, JSON.stringify(echo.body)).toBe(200);
    const front = await upload(
      "front",
      `export default { async fetch(req, env) {
        try { return new Response("front got: " + await (await env.ECHO.fetch(req)).text()); }
        catch (e) { return new Response("echo unreachable: " + e.message, { status: 502 }); }
      } };`,
      [{ type: "service", name: "ECHO", service: "echo" }],
    );
    expect(front.status, JSON.stringify(front.body)).toBe(200);
    await vi.waitFor(async () => expect(await call("front")).toEqual({ status: 200, text: "front got: echo says hello" }), {
      timeout: 10_000,
    });
    const list = (await stack.api("GET", "/workers/scripts")).result.map((s) => s.id).sort();
    expect(list).toEqual(["echo", "front", "tenantry"]);

    // Cron triggers: kept as sent, fired by hand here (npm run dev fires them on time).
    const schedules = (cron) =>
      fetch(`${stack.apiBase}/accounts/${stack.accountId}/workers/scripts/echo/schedules`, {
        method: "PUT",
        headers: { authorization: `Bearer ${stack.token}`, "content-type": "application/json" },
        body: JSON.stringify(cron.map((c) => ({ cron: c }))),
      });
    expect((await schedules(["*/5 * * * *", "0 3 * * mon"])).status).toBe(200);
    expect((await stack.api("GET", "/workers/scripts/echo/schedules")).result.schedules.map((s) => s.cron)).toEqual([
      "*/5 * * * *",
      "0 3 * * mon",
    ]);
    for (const bad of [["not a cron"], ["* * * *"], ["61 * * * *"]]) expect((await schedules(bad)).status).toBe(400);
    const fired = await fetch(`${stack.cloudUrl}/__cloud/scheduled?script=echo`, {
      method: "POST",
      headers: { authorization: `Bearer ${stack.token}` },
    });
    expect(fired.status).toBe(200);
    const missing = await fetch(`${stack.cloudUrl}/__cloud/scheduled?script=nope`, {
      method: "POST",
      headers: { authorization: `Bearer ${stack.token}` },
    });
    expect(missing.status).toBe(404);

    // A service binding to a script that does not exist is refused.
    const dangling = await upload("front", `export default { fetch: () => new Response("x") };`, [
      { type: "service", name: "NOPE", service: "nope" },
    ]);
    expect(dangling.status).toBe(400);
    expect(dangling.body.errors[0].code).toBe(10021);
  });

  test("20 uploads at once: every script is created once, with its own version, and serves", async () => {
    const names = Array.from({ length: 20 }, (_, i) => `burst-${i}`);
    const results = await Promise.all(names.map((n) => upload(n, `export default { fetch: () => new Response("${n}") };`)));
    for (const r of results) expect(r.status, JSON.stringify(r.body)).toBe(200);
    const listed = (await stack.api("GET", "/workers/scripts")).result.map((s) => s.id);
    expect(listed).toEqual(expect.arrayContaining(names));
    await vi.waitFor(async () => expect(await call("burst-7")).toEqual({ status: 200, text: "burst-7" }), { timeout: 10_000 });
    for (const n of names) expect((await stack.api("GET", `/workers/scripts/${n}/versions`)).result.items).toHaveLength(1);
    await Promise.all(names.map((n) => stack.api("DELETE", `/workers/scripts/${n}`)));
  });

  test("a script that throws at startup is refused (10021) and the deployed version keeps serving", async () => {
    const broken = await upload("echo", `throw new Error("boom at startup"); export default {};`);
    expect(broken.status).toBe(400);
    const body = broken.body;
    expect(body.errors[0].code).toBe(10021);
    expect(body.errors[0].message).toMatch(/boom at startup/);
    expect(await call("echo")).toEqual({ status: 200, text: "echo says hello" });
  });

  test("a script other scripts bind is deleted only when forced (wrangler delete); then a binding to it fails when called, and the others keep serving", async () => {
    // front binds echo: the API refuses a plain delete and lists front among echo's references.
    const refused = await stack.api("DELETE", "/workers/scripts/echo", undefined, { raw: true });
    expect(refused.status).toBe(400);
    expect((await stack.api("GET", "/workers/scripts/echo/references")).result.services.incoming).toEqual([
      { service: "front", environment: "production" },
    ]);
    expect(stack.runtime.running.has("echo")).toBe(true);
    // `wrangler delete` shows the dependents, asks (yes in CI), and deletes with force=true.
    const del = await wrangler(["delete", "--name", "echo"], stack.cloudUrl, { cwd: os.tmpdir() });
    expect(del.code, del.stdout + del.stderr).toBe(0);
    expect(del.stdout + del.stderr).toMatch(/Worker front \(production\) uses this Worker as a Service Binding/);
    await vi.waitFor(async () => expect(stack.runtime.running.has("echo")).toBe(false), { timeout: 10_000 });
    await expect(call("echo")).rejects.toThrow(/no version of Worker echo is deployed/);
    expect((await call("front")).status).toBe(502);
    expect((await stack.runtime.dispatch("http://localhost/healthz")).status).toBe(200);
  });
});
