// Randomised create/delete lifecycles with faults injected on every Cloudflare API endpoint
// (5xx, 429 + Retry-After, timeouts, lost responses after success). After the reconciler has run:
// no orphan database, no tenant in a non-terminal state, every active tenant bound and answering,
// every deleted tenant with a verified backup. Prints the counts.
//
// LIFECYCLES (default 200) and SEED (default 7) can be set in the environment.

import { createHash } from "node:crypto";
import pLimit from "p-limit";
import { expect, test, vi } from "vitest";
import { ENDPOINTS } from "../../cloud/faults.mjs";
import { ADMIN_PASSWORD, admin, api, request, setFaults, sql, stack, tenantBindings } from "../helpers.mjs";

const LIFECYCLES = Number(process.env.LIFECYCLES ?? 200);
const SEED = Number(process.env.SEED ?? 7);
const CONCURRENCY = 8;

function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const faultRules = ENDPOINTS.flatMap((endpoint) => [
  { endpoint, kind: "error", status: 503, probability: 0.05 },
  { endpoint, kind: "error", status: 500, probability: 0.03 },
  { endpoint, kind: "rate_limit", retry_after: 1, probability: 0.02 },
  { endpoint, kind: "timeout", delay_ms: 150, probability: 0.03 },
  { endpoint, kind: "lose_response", probability: 0.05 },
  { endpoint, kind: "delay", delay_ms: 80, probability: 0.05 },
]);

/**
 * Polls a tenant every 150 ms until it settles, 15 polls at most: faults may leave it "unsettled",
 * the reconciler finishes it. (The timeout only bounds polls that throw.)
 */
function settle(slug, want, polls = 15) {
  let left = polls;
  return vi.waitFor(
    async () => {
      const status = (await admin("GET", `/v1/tenants/${slug}`)).json?.tenant?.status;
      if (status === want || status === "failed") return status;
      if (--left === 0) return "unsettled";
      throw new Error(`tenant ${slug} is ${status}`);
    },
    { timeout: 60_000, interval: 150 },
  );
}

test(`${LIFECYCLES} randomised lifecycles under injected faults converge`, { timeout: 900_000 }, async () => {
  const random = rng(SEED);
  const tag = `rel${SEED}-${Date.now().toString(36)}`;
  const plans = Array.from({ length: LIFECYCLES }, (_, i) => ({
    slug: `${tag}-${i}`,
    // 70 % are deleted again; a third of those without waiting for the create to settle.
    remove: random() < 0.7,
    eager: random() < 0.33,
    rows: 1 + Math.floor(random() * 3),
  }));

  await setFaults(faultRules, SEED);
  const started = performance.now();
  await pLimit(CONCURRENCY).map(plans, async (plan) => {
    const create = await admin("POST", "/v1/tenants", {
      slug: plan.slug,
      name: plan.slug,
      admin: { email: `a@${plan.slug}.test`, password: ADMIN_PASSWORD },
    });
    expect([201, 202], create.text).toContain(create.status);
    if (plan.remove && plan.eager) {
      await admin("DELETE", `/v1/tenants/${plan.slug}`);
      return;
    }
    const status = await settle(plan.slug, "active");
    if (plan.remove && status !== "unsettled") await admin("DELETE", `/v1/tenants/${plan.slug}`);
  });
  const faultsResponse = await fetch(`${stack.cloudUrl}/__cloud/faults`, { headers: { authorization: `Bearer ${stack.token}` } });
  const faults = /** @type {{ result: { hits: Record<string, number> } }} */ (await faultsResponse.json());
  await setFaults([]);
  const runSeconds = (performance.now() - started) / 1000;

  // The reconciler finishes whatever the faults left open (a few passes: each is bounded).
  let passes = 0;
  for (; passes < 20; passes++) {
    const report = await admin("POST", "/v1/reconcile");
    expect(report.status, report.text).toBe(200);
    if (report.json.operations.unfinished.length === 0 && report.json.operations.finished === 0 && report.json.bindings.converged) break;
  }

  // Delete requests the faults swallowed entirely are re-sent (a client would); then settle again.
  const all = [];
  let cursor = "";
  for (;;) {
    const page = await admin("GET", `/v1/tenants?limit=200${cursor ? `&cursor=${cursor}` : ""}`);
    all.push(...page.json.tenants.filter((t) => t.slug.startsWith(tag)));
    if (!page.json.next_cursor) break;
    cursor = page.json.next_cursor;
  }
  const bySlug = new Map(all.map((t) => [t.slug, t]));
  const missing = plans.filter((p) => !bySlug.has(p.slug));
  const toDelete = plans.filter((p) => p.remove && bySlug.get(p.slug)?.status !== "deleted");
  for (const p of missing)
    await admin("POST", "/v1/tenants", { slug: p.slug, name: p.slug, admin: { email: `a@${p.slug}.test`, password: ADMIN_PASSWORD } });
  for (const p of toDelete) await admin("DELETE", `/v1/tenants/${p.slug}`);
  for (let i = 0; i < 10; i++) {
    const report = await admin("POST", "/v1/reconcile");
    if (report.json.operations.unfinished.length === 0 && report.json.operations.finished === 0) break;
  }

  // --- the end state -------------------------------------------------------------------------
  const final = await Promise.all(plans.map(async (p) => (await admin("GET", `/v1/tenants/${p.slug}`)).json.tenant));
  const count = (status) => final.filter((t) => t?.status === status).length;
  const active = final.filter((t) => t.status === "active");
  const deleted = final.filter((t) => t.status === "deleted");
  const unsettled = final.filter((t) => !["active", "deleted"].includes(t.status));

  const bindings = await tenantBindings();
  const boundIds = new Map(bindings.map((b) => [b.name, b.id]));
  // Bound exactly once each.
  expect(bindings.length).toBe(new Set(bindings.map((b) => b.name)).size);
  const answering = await Promise.all(
    active.map(async (t) => {
      const res = await request(`${t.slug}.localhost`, "/api/auth/login", {
        method: "POST",
        body: { email: `a@${t.slug}.test`, password: ADMIN_PASSWORD },
      });
      return res.status === 200;
    }),
  );
  const bound = active.filter((t) => boundIds.get(t.binding) === t.database.id);

  const databases = (await api("GET", `/d1/database?name=tenantry-${tag}&per_page=1000`)).result.filter((d) =>
    d.name.startsWith(`tenantry-${tag}`),
  );
  const owned = new Set(active.map((t) => t.database.name));
  const orphans = databases.filter((d) => !owned.has(d.name));

  let verifiedBackups = 0;
  let neverHadDatabase = 0;
  for (const t of deleted) {
    if (!t.backup) {
      neverHadDatabase++;
      continue;
    }
    const res = await admin("GET", `/v1/tenants/${t.slug}/backup`);
    const dump = Buffer.from(res.text);
    if (res.status === 200 && createHash("sha256").update(dump).digest("hex") === t.backup.sha256 && dump.length === t.backup.bytes)
      verifiedBackups++;
  }
  // A sample of backups restores to the rows the tenant had (its stamp row at least). A tenant
  // deleted before its create migrated its database has an empty backup: not that one.
  let sample;
  let dump = "";
  for (const t of deleted.filter((d) => d.backup)) {
    dump = (await admin("GET", `/v1/tenants/${t.slug}/backup`)).text;
    if (dump.includes("tenant_meta")) {
      sample = t;
      break;
    }
  }
  expect(sample, "a deleted tenant with a migrated database").toBeTruthy();
  if (sample) {
    const restored = (await api("POST", "/d1/database", { name: `restore-${sample.slug}` })).result;
    await sql(restored.uuid, dump);
    expect((await sql(restored.uuid, "SELECT value FROM tenant_meta WHERE key = 'slug'"))[0].results).toEqual([{ value: sample.slug }]);
    await api("DELETE", `/d1/database/${restored.uuid}`);
  }

  const hits = Object.values(faults.result.hits).reduce((a, b) => a + b, 0);
  console.log(
    [
      `reliability: ${LIFECYCLES} lifecycles (seed ${SEED}, ${CONCURRENCY} at a time) in ${runSeconds.toFixed(1)} s, ${hits} faults injected`,
      `  faults by endpoint/kind: ${JSON.stringify(faults.result.hits)}`,
      `  reconciler passes: ${passes + 1}; creates re-sent: ${missing.length}; deletes re-sent: ${toDelete.length}`,
      `  tenants: ${count("active")} active, ${count("deleted")} deleted, ${count("failed")} failed, ${count("provisioning")} provisioning, ${count("deleting")} deleting`,
      `  active: ${bound.length} bound, ${answering.filter(Boolean).length} answering`,
      `  deleted: ${verifiedBackups} with a verified backup, ${neverHadDatabase} deleted before a database existed`,
      `  orphan databases: ${orphans.length}`,
    ].join("\n"),
  );

  expect(unsettled.map((t) => `${t.slug}:${t.status}:${t.last_error}`)).toEqual([]);
  expect(active.length + deleted.length).toBe(LIFECYCLES);
  expect(deleted.length).toBe(plans.filter((p) => p.remove).length);
  expect(bound.length).toBe(active.length);
  expect(answering.every(Boolean)).toBe(true);
  expect(verifiedBackups + neverHadDatabase).toBe(deleted.length);
  expect(orphans.map((d) => d.name)).toEqual([]);
  expect(hits).toBeGreaterThan(LIFECYCLES / 2);
});
