// The upgrade in place, on a stack of its own: a deployment of the single-script layout (every
// tenant binding on the main Worker) with tenants is redeployed with binding hosts. The
// reconciler moves each tenant to a host (bound there and checked before it is served through
// it), then drops the main Worker's tenant bindings a grace minute later. Requests to every
// tenant run throughout; none may fail.

import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, expect, test, vi } from "vitest";
import { adminClient, hostRequest } from "../../cloud/client.mjs";
import { tenantBindings } from "../../cloud/provision.mjs";
import { HOSTS_NAMESPACE, startStack } from "../../cloud/stack.mjs";

const PASSWORD = "a long enough password";
const SLUGS = Array.from({ length: 12 }, (_, i) => `up-${i}`);

let stateDir;
/** @type {Awaited<ReturnType<typeof startStack>>} */
let stack;
let admin;
let port;

beforeAll(async () => {
  stateDir = await mkdtemp(path.join(os.tmpdir(), "tenantry-upgrade-"));
  stack = await startStack({ stateDir, hostsNamespace: "", hostCapacity: 5 });
  admin = adminClient(stack.url, stack.adminToken);
  port = Number(new URL(stack.url).port);
}, 120_000);

afterAll(async () => {
  await stack?.stop();
  await rm(stateDir, { recursive: true, force: true });
});

const login = (slug) =>
  hostRequest(port, `${slug}.localhost`, "/api/auth/login", { method: "POST", body: { email: `admin@${slug}.test`, password: PASSWORD } });

test("a single-script deployment moves to binding hosts with no tenant answering an error", { timeout: 300_000 }, async () => {
  for (const slug of SLUGS) {
    const res = await admin("POST", "/v1/tenants", { slug, name: slug, admin: { email: `admin@${slug}.test`, password: PASSWORD } });
    expect([201, 202], res.text).toContain(res.status);
  }
  await vi.waitFor(
    async () => {
      for (const slug of SLUGS) {
        await admin("GET", `/v1/tenants/${slug}`);
        expect((await login(slug)).status, slug).toBe(200);
      }
    },
    { timeout: 60_000, interval: 250 },
  );
  let bindings = await tenantBindings(stack.api);
  expect(bindings.map((b) => b.script)).toEqual(SLUGS.map(() => "main"));

  // Every tenant is asked for, in a loop, from here to the end.
  let running = true;
  const failures = [];
  let requests = 0;
  const loops = SLUGS.map(async (slug) => {
    while (running) {
      const res = await login(slug);
      requests++;
      if (res.status !== 200) failures.push(`${slug}: ${res.status} ${res.text.slice(0, 160)}`);
      await sleep(20);
    }
  });

  // The upgrade: the same code, redeployed with binding hosts configured.
  const started = Date.now();
  stack.target.vars.HOSTS_NAMESPACE = HOSTS_NAMESPACE;
  await stack.deployBuild({ force: true, message: "binding hosts" });
  let moved = [];
  await vi.waitFor(
    async () => {
      const report = await admin("POST", "/v1/reconcile");
      expect(report.status, report.text).toBe(200);
      const tenants = await Promise.all(SLUGS.map(async (s) => (await admin("GET", `/v1/tenants/${s}`)).json.tenant));
      moved = tenants.filter((t) => t.served_from !== "main");
      expect(moved.length).toBe(SLUGS.length);
    },
    { timeout: 60_000, interval: 500 },
  );
  const movedAfter = Date.now() - started;
  // The main Worker keeps the old bindings for a grace minute, then the reconciler drops them.
  await vi.waitFor(
    async () => {
      await admin("POST", "/v1/reconcile");
      bindings = await tenantBindings(stack.api);
      expect(bindings.filter((b) => b.script === "main")).toEqual([]);
    },
    { timeout: 150_000, interval: 2_000 },
  );
  await sleep(1_000);
  running = false;
  await Promise.all(loops);

  expect(failures).toEqual([]);
  expect(requests).toBeGreaterThan(100);
  // Each tenant bound exactly once, on a host under its cap.
  expect(bindings.map((b) => b.name).sort()).toEqual(SLUGS.map((s) => `TENANT_${s.toUpperCase().replaceAll("-", "_")}`).sort());
  const perHost = new Map();
  for (const b of bindings) perHost.set(b.script, (perHost.get(b.script) ?? 0) + 1);
  expect([...perHost.values()].every((n) => n <= 5)).toBe(true);
  expect(perHost.size).toBe(3);
  console.log(
    `upgrade: ${SLUGS.length} tenants served through hosts ${movedAfter} ms after the deploy; main bindings gone after ${Date.now() - started} ms; ${requests} requests, ${failures.length} failed`,
  );
});
