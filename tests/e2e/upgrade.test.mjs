// The upgrade in place, on a stack of its own: a deployment of the single-script layout (every
// tenant binding on the main Worker) with tenants is redeployed with binding hosts. The
// reconciler moves each tenant to a host (bound there and checked before it is served through
// it), then drops the main Worker's tenant bindings a grace minute later. Requests to every
// tenant run throughout; none may fail.

import { setTimeout as sleep } from "node:timers/promises";
import { expect, test, vi } from "vitest";
import { tenantBindings } from "../../cloud/provision.mjs";
import { HOSTS_NAMESPACE } from "../../cloud/stack.mjs";
import { ownStack } from "../own-stack.mjs";

const SLUGS = Array.from({ length: 12 }, (_, i) => `up-${i}`);

// Started in the single-script layout (no hosts namespace), hosts of 5 once it has one.
const own = ownStack("upgrade", { hostsNamespace: "", hostCapacity: 5 });

test("a single-script deployment moves to binding hosts with no tenant answering an error", { timeout: 300_000 }, async () => {
  const { stack, admin } = own;
  for (const slug of SLUGS) await own.createTenant(slug);
  for (const slug of SLUGS) await own.serving(slug, 60_000);
  let bindings = await tenantBindings(stack.api);
  expect(bindings.map((b) => b.script)).toEqual(SLUGS.map(() => "main"));

  // Every tenant is asked for, in a loop, from here to the end.
  const stopAsking = own.keepAsking(SLUGS);

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
  const { failures, requests } = await stopAsking();

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
