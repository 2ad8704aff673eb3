// Tenants across binding hosts, end to end on the shared stack (hosts of 25 tenants): 200 tenants
// created (and some deleted) at once with faults injected on every Cloudflare API endpoint,
// then, after the reconciler: no orphan database or host script, every tenant bound exactly once
// (on its own host) and serving, every host under its cap, and the main Worker not changed by
// any of it.

import pLimit from "p-limit";
import { expect, test, vi } from "vitest";
import { ENDPOINTS } from "../../cloud/faults.mjs";
import { ADMIN_PASSWORD, admin, api, request, setFaults, stack, tenantBindings } from "../helpers.mjs";

const TENANTS = 200;
const CONCURRENCY = 8;

const faultRules = ENDPOINTS.flatMap((endpoint) => [
  { endpoint, kind: "error", status: 503, probability: 0.04 },
  { endpoint, kind: "rate_limit", retry_after: 1, probability: 0.02 },
  { endpoint, kind: "timeout", delay_ms: 150, probability: 0.02 },
  { endpoint, kind: "lose_response", probability: 0.04 },
]);

const mainVersions = async () => (await api("GET", "/workers/scripts/tenantry/versions")).result.items.length;

/** Every tenant of this run (paginated). */
async function tenantsOf(tag) {
  const all = [];
  let cursor = "";
  for (;;) {
    const page = await admin("GET", `/v1/tenants?limit=200${cursor ? `&cursor=${cursor}` : ""}`);
    all.push(...page.json.tenants.filter((t) => t.slug.startsWith(tag)));
    if (!page.json.next_cursor) return all;
    cursor = page.json.next_cursor;
  }
}

test(
  `${TENANTS} tenants over binding hosts under injected faults: each bound once, on its host, serving`,
  { timeout: 900_000 },
  async () => {
    const tag = `hst-${Date.now().toString(36)}`;
    const slugs = Array.from({ length: TENANTS }, (_, i) => `${tag}-${i}`);
    const deleted = new Set(slugs.filter((_, i) => i % 10 === 3)); // 20 deleted again
    const versionsBefore = await mainVersions();

    await setFaults(faultRules, 13);
    const started = performance.now();
    await pLimit(CONCURRENCY).map(slugs, async (slug) => {
      const body = { slug, name: slug, admin: { email: `a@${slug}.test`, password: ADMIN_PASSWORD } };
      // A client re-sends a create the faults answered with an error (it is idempotent).
      await vi.waitFor(
        async () => {
          const res = await admin("POST", "/v1/tenants", body);
          if (![201, 202].includes(res.status)) throw new Error(`${slug}: ${res.status} ${res.text}`);
        },
        { timeout: 60_000, interval: 200 },
      );
      if (deleted.has(slug)) await admin("DELETE", `/v1/tenants/${slug}`);
    });
    await setFaults([]);
    const runSeconds = (performance.now() - started) / 1000;

    // The reconciler finishes what the faults left open; deletes the faults swallowed are re-sent.
    for (let pass = 0; pass < 30; pass++) {
      const report = await admin("POST", "/v1/reconcile");
      expect(report.status, report.text).toBe(200);
      const tenants = await tenantsOf(tag);
      for (const t of tenants)
        if (deleted.has(t.slug) && t.status !== "deleted" && t.status !== "deleting") await admin("DELETE", `/v1/tenants/${t.slug}`);
      const settled = tenants.every((t) => t.status === (deleted.has(t.slug) ? "deleted" : "active"));
      if (settled && report.json.operations.unfinished.length === 0) break;
    }

    const tenants = await tenantsOf(tag);
    expect(tenants.length).toBe(TENANTS);
    const wrong = tenants
      .filter((t) => t.status !== (deleted.has(t.slug) ? "deleted" : "active"))
      .map((t) => `${t.slug}: ${t.status} ${t.last_error}`);
    expect(wrong).toEqual([]);
    const active = tenants.filter((t) => t.status === "active");

    // Bound exactly once, on its own host, to its own database; deleted ones nowhere.
    const bindings = await tenantBindings();
    const byName = new Map();
    for (const b of bindings) byName.set(b.name, [...(byName.get(b.name) ?? []), b]);
    for (const t of active) {
      expect(t.served_from, t.slug).toBe(t.host);
      expect(byName.get(t.binding), t.slug).toEqual([{ script: t.host, name: t.binding, id: t.database.id }]);
    }
    for (const t of tenants.filter((x) => x.status === "deleted")) expect(byName.get(t.binding), t.slug).toBeUndefined();

    // Every host under its cap; at least 8 of them hold this run's tenants; no script without a host.
    const perHost = new Map();
    for (const b of bindings) if (b.script !== "main") perHost.set(b.script, (perHost.get(b.script) ?? 0) + 1);
    for (const [host, n] of perHost) expect(n, host).toBeLessThanOrEqual(stack.hostCapacity);
    const usedHere = new Set(active.map((t) => t.host));
    expect(usedHere.size).toBeGreaterThanOrEqual(8);
    expect(bindings.filter((b) => b.script === "main")).toEqual([]);
    const scripts = (await api("GET", "/workers/dispatch/namespaces/tenantry-hosts/scripts")).result.map((s) => s.script.id);
    const report = await admin("POST", "/v1/reconcile");
    expect(Object.keys(report.json.hosts).sort()).toEqual([...scripts].sort()); // every script is a known host

    // No orphan database of this run.
    const databases = (await api("GET", `/d1/database?name=tenantry-${tag}&per_page=1000`)).result.filter((d) =>
      d.name.startsWith(`tenantry-${tag}`),
    );
    const owned = new Set(active.map((t) => t.database.name));
    expect(databases.map((d) => d.name).filter((n) => !owned.has(n))).toEqual([]);

    // Every active tenant serves.
    const answering = await pLimit(16).map(active, async (t) => {
      const res = await request(`${t.slug}.localhost`, "/api/auth/login", {
        method: "POST",
        body: { email: `a@${t.slug}.test`, password: ADMIN_PASSWORD },
      });
      return res.status === 200 ? null : `${t.slug}: ${res.status}`;
    });
    expect(answering.filter(Boolean)).toEqual([]);

    // Tenant churn made no version of the main Worker.
    expect(await mainVersions()).toBe(versionsBefore);
    console.log(
      `hosts: ${TENANTS} creates (${deleted.size} deleted) under faults in ${runSeconds.toFixed(0)} s; ${active.length} active over ${usedHere.size} hosts (cap ${stack.hostCapacity}); ${perHost.size} hosts in all`,
    );
  },
);
