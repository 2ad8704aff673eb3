// One tenant cannot hurt the others: per-tenant rate limits (the Rate Limiting binding, from the
// plan), usage metering (batched per isolate, flushed in the background), quotas on monthly API
// calls and storage, and plan expiry. Limits are wrangler.toml's, as deployed.

import { describe, expect, test } from "vitest";
import { ADMIN_PASSWORD, admin, authed, createTenant, login, request, sql, waitFor } from "../helpers.mjs";

/** Sends `send(i)` for i = 0.. in waves of `wave` at once until one answers `status`, or `max` were sent. */
async function untilStatus(send, status, { wave = 25, max = 3_000 } = {}) {
  const answers = [];
  while (answers.length < max) {
    const batch = await Promise.all(Array.from({ length: wave }, (_, k) => send(answers.length + k)));
    answers.push(...batch);
    if (batch.some((r) => r.status === status)) break;
  }
  return answers;
}

/** The tenant's usage, through the admin API. */
async function usage(slug, query = "") {
  const res = await admin("GET", `/v1/tenants/${slug}/usage${query}`);
  expect(res.status, res.text).toBe(200);
  return res.json;
}

describe("rate limits", () => {
  test("a tenant past its plan's rate limit gets 429 naming the limit; its neighbour is served", async () => {
    const [noisy, quiet] = await Promise.all([createTenant(), createTenant()]);
    const answers = await untilStatus((i) => authed(noisy.slug, noisy.token, `/api/me?i=${i}`), 429, { wave: 50 });
    const statuses = new Set(answers.map((r) => r.status));
    expect([...statuses].sort()).toEqual([200, 429]);
    const served = answers.filter((r) => r.status === 200).length;
    // The free plan: 1,200 a minute (the sign-in counted too); a window may turn during the burst.
    expect(served).toBeGreaterThanOrEqual(1_150);
    expect(served).toBeLessThanOrEqual(2_400);
    const refused = answers.find((r) => r.status === 429);
    expect(refused.headers["retry-after"]).toBe("60");
    expect(refused.json.error).toMatchObject({ code: "rate_limited", limit: "tenant_requests", allowed: 1200, period_seconds: 60 });
    // Refused writes never reach the tenant's database (its statements wait for the limit's
    // answer, and a refusal holds them back): the projects there are exactly the ones answered 201.
    const writes = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        authed(noisy.slug, noisy.token, "/api/projects", { method: "POST", body: { name: `refused ${i}` } }),
      ),
    );
    expect(writes.filter((r) => r.status === 429).length).toBeGreaterThan(0);
    expect(writes.every((r) => [201, 429].includes(r.status))).toBe(true);
    const [{ results }] = await sql(noisy.uuid, "SELECT COUNT(*) AS n FROM projects");
    expect(results[0].n).toBe(writes.filter((r) => r.status === 201).length);
    // The neighbour is not limited by the noisy tenant's traffic.
    for (let i = 0; i < 5; i++) expect((await authed(quiet.slug, quiet.token, "/api/me")).status).toBe(200);
    // Rate-limited requests are metered apart from served ones.
    await waitFor(async () => (await usage(noisy.slug)).days.at(-1)?.rate_limited > 0, "the refusals to be metered", 30_000);
  });

  test("writes are limited per user: one user's burst leaves another's writes alone", async () => {
    const t = await createTenant();
    const other = `second@${t.slug}.test`;
    const made = await authed(t.slug, t.token, "/api/users", {
      method: "POST",
      body: { email: other, password: ADMIN_PASSWORD, role: "admin" },
    });
    expect(made.status, made.text).toBe(201);
    const otherToken = await login(t.slug, other);
    const project = await authed(t.slug, t.token, "/api/projects", { method: "POST", body: { name: "p" } });
    expect(project.status).toBe(201);
    const id = project.json.project.id;
    const answers = await untilStatus(
      (i) => authed(t.slug, t.token, `/api/projects/${id}`, { method: "PATCH", body: { description: `edit ${i}` } }),
      429,
      { wave: 20, max: 800 },
    );
    expect(new Set(answers.map((r) => r.status))).toEqual(new Set([200, 429]));
    expect(answers.filter((r) => r.status === 200).length).toBeGreaterThanOrEqual(280);
    const refused = answers.find((r) => r.status === 429);
    expect(refused.json.error).toMatchObject({ code: "rate_limited", limit: "user_writes", allowed: 300 });
    // Reads by the same user, and the other user's writes, still go through.
    expect((await authed(t.slug, t.token, `/api/projects/${id}`)).status).toBe(200);
    const theirs = await authed(t.slug, otherToken, `/api/projects/${id}`, { method: "PATCH", body: { description: "mine" } });
    expect(theirs.status, theirs.text).toBe(200);
  });

  test("sign-ins are limited per email; another email still signs in", async () => {
    const t = await createTenant();
    const other = `second@${t.slug}.test`;
    expect(
      (await authed(t.slug, t.token, "/api/users", { method: "POST", body: { email: other, password: ADMIN_PASSWORD, role: "member" } }))
        .status,
    ).toBe(201);
    const answers = await untilStatus(
      () => request(`${t.slug}.localhost`, "/api/auth/login", { method: "POST", body: { email: t.email, password: ADMIN_PASSWORD } }),
      429,
      { wave: 10, max: 300 },
    );
    expect(new Set(answers.map((r) => r.status))).toEqual(new Set([200, 429]));
    expect(answers.filter((r) => r.status === 200).length).toBeGreaterThanOrEqual(55);
    const refused = answers.find((r) => r.status === 429);
    expect(refused.json.error).toMatchObject({ code: "rate_limited", limit: "login_per_email", allowed: 60 });
    expect(refused.headers["retry-after"]).toBe("60");
    // The email is matched whatever its case.
    const upper = await request(`${t.slug}.localhost`, "/api/auth/login", {
      method: "POST",
      body: { email: t.email.toUpperCase(), password: ADMIN_PASSWORD },
    });
    expect(upper.status).toBe(429);
    expect(typeof (await login(t.slug, other))).toBe("string");
  });
});

describe("usage metering", () => {
  test("requests (a burst of 50 among them, each counted once), rows and size reach the admin API per day and per month, with no control-plane query on the requests", async () => {
    const t = await createTenant();
    // Let the sign-in's count land, then measure from there.
    const settled = async () => {
      const first = (await usage(t.slug)).current_month.api_calls.used;
      await new Promise((r) => setTimeout(r, 11_000));
      return first === (await usage(t.slug)).current_month.api_calls.used ? first : settled();
    };
    const before = await settled();
    const controlQueries = [];
    for (let i = 0; i < 3; i++) {
      const made = await authed(t.slug, t.token, "/api/projects", { method: "POST", body: { name: `p${i}` } });
      expect(made.status).toBe(201);
    }
    for (let i = 0; i < 7; i++) {
      const read = await authed(t.slug, t.token, "/api/projects");
      expect(read.status).toBe(200);
      controlQueries.push(Number(read.headers["x-tenantry-control-queries"]));
    }
    // The cache holds the tenant: hot requests ask the control plane nothing.
    expect(controlQueries.filter((q) => q > 0).length).toBeLessThanOrEqual(1);
    const burst = await Promise.all(Array.from({ length: 50 }, () => authed(t.slug, t.token, "/api/projects")));
    expect(burst.every((r) => r.status === 200)).toBe(true);
    await waitFor(async () => (await usage(t.slug)).current_month.api_calls.used >= before + 60, "the 60 requests to be flushed", 30_000);
    // Once more after a whole flush interval: nothing was counted twice.
    await new Promise((r) => setTimeout(r, 11_000));
    const u = await usage(t.slug);
    const today = u.days.at(-1);
    expect(today.period).toBe(u.to);
    expect(today.requests).toBe(before + 60);
    expect(today.rows_written).toBeGreaterThanOrEqual(6); // 3 projects and their 3 audit rows
    expect(today.rows_read).toBeGreaterThan(0);
    expect(today.size_bytes).toBeGreaterThan(0);
    expect(u.months).toEqual([{ ...today, period: u.to.slice(0, 7) }]);
    expect(u.current_month).toMatchObject({ api_calls: { used: before + 60, limit: 100_000 }, storage_bytes: { limit: 100_000_000 } });
    expect(u.current_month.storage_bytes.used).toBe(today.size_bytes);

    const fleet = await admin("GET", `/v1/usage?month=${u.to.slice(0, 7)}&limit=500`);
    expect(fleet.status).toBe(200);
    expect(fleet.json.totals.requests).toBeGreaterThanOrEqual(today.requests);
    let mine = fleet.json.tenants.find((x) => x.slug === t.slug);
    for (let offset = fleet.json.next_offset; !mine && offset;) {
      const page = await admin("GET", `/v1/usage?month=${u.to.slice(0, 7)}&limit=500&offset=${offset}`);
      mine = page.json.tenants.find((x) => x.slug === t.slug);
      offset = page.json.next_offset;
    }
    expect(mine).toMatchObject({ requests: today.requests, rows_written: today.rows_written });
  });

  test("bad usage queries are 422, an unknown tenant 404", async () => {
    const t = await createTenant();
    for (const q of ["?from=2026-13-01", "?to=tomorrow", "?from=2026-11-30&to=2026-11-01", "?from=2020-01-01&to=2026-11-01"]) {
      const res = await admin("GET", `/v1/tenants/${t.slug}/usage${q}`);
      expect(res.status, q).toBe(422);
      expect(res.json.error.code).toBe("validation_failed");
    }
    expect((await admin("GET", "/v1/usage?month=2026-1")).status).toBe(422);
    expect((await admin("GET", "/v1/usage?limit=x")).status).toBe(422);
    expect((await admin("GET", "/v1/tenants/no-such-tenant-here/usage")).status).toBe(404);
    expect((await admin("POST", `/v1/tenants/${t.slug}/usage`)).status).toBe(405);
  });
});

describe("quotas and plan expiry", () => {
  test("past its monthly API calls a tenant's writes get 402 with the figures; reads go on", async () => {
    const t = await createTenant();
    const set = await admin("PATCH", `/v1/tenants/${t.slug}`, { quotas: { api_calls_per_month: 20 } });
    expect(set.status, set.text).toBe(200);
    expect(set.json.tenant.quotas).toEqual({ api_calls_per_month: 20, storage_bytes: 100_000_000 });
    for (let i = 0; i < 20; i++) await authed(t.slug, t.token, "/api/me");
    const refused = await waitFor(
      async () => {
        const r = await authed(t.slug, t.token, "/api/projects", { method: "POST", body: { name: "over" } });
        return r.status === 402 ? r : null;
      },
      "the quota to be reached",
      30_000,
    );
    expect(refused.json.error).toMatchObject({ code: "api_call_quota_exceeded", detail: { quota: "api_calls_per_month", limit: 20 } });
    expect(refused.json.error.detail.used).toBeGreaterThanOrEqual(20);
    expect((await authed(t.slug, t.token, "/api/projects")).status).toBe(200);
    // Lifting the tenant's own quota (back to the plan's) lets writes through again.
    expect((await admin("PATCH", `/v1/tenants/${t.slug}`, { quotas: null })).status).toBe(200);
    await waitFor(
      async () => (await authed(t.slug, t.token, "/api/projects", { method: "POST", body: { name: "after" } })).status === 201,
      "writes to be allowed again",
      15_000,
    );
  });

  test("past its storage quota a tenant may read and delete, not add", async () => {
    const t = await createTenant();
    const made = await authed(t.slug, t.token, "/api/projects", { method: "POST", body: { name: "keep" } });
    expect(made.status).toBe(201);
    expect((await admin("PATCH", `/v1/tenants/${t.slug}`, { quotas: { storage_bytes: 1_000 } })).status).toBe(200);
    const refused = await waitFor(
      async () => {
        const r = await authed(t.slug, t.token, "/api/projects", { method: "POST", body: { name: "more" } });
        return r.status === 402 ? r : null;
      },
      "the metered size to reach the quota",
      40_000,
    );
    expect(refused.json.error.code).toBe("storage_quota_exceeded");
    expect(refused.json.error.detail.used).toBeGreaterThan(1_000);
    expect((await authed(t.slug, t.token, "/api/projects")).status).toBe(200);
    const removed = await authed(t.slug, t.token, `/api/projects/${made.json.project.id}`, { method: "DELETE" });
    expect(removed.status, removed.text).toBe(200);
  });

  test("an expired plan refuses every write with 402 plan_expired; sign-in and reads go on; renewing lifts it", async () => {
    const t = await createTenant();
    const past = new Date(Date.now() - 60_000).toISOString();
    const set = await admin("PATCH", `/v1/tenants/${t.slug}`, { plan_expires_at: past });
    expect(set.status, set.text).toBe(200);
    expect(set.json.tenant.plan_expires_at).toBe(past);
    const refused = await waitFor(
      async () => {
        const r = await authed(t.slug, t.token, "/api/projects", { method: "POST", body: { name: "x" } });
        return r.status === 402 ? r : null;
      },
      "the expiry to take effect",
      15_000,
    );
    expect(refused.json.error).toMatchObject({ code: "plan_expired", detail: { plan_expires_at: past } });
    const del = await authed(t.slug, t.token, "/api/projects/1", { method: "DELETE" });
    expect(del.status).toBe(402);
    expect((await authed(t.slug, t.token, "/api/projects")).status).toBe(200);
    expect(typeof (await login(t.slug, t.email))).toBe("string");
    expect((await usage(t.slug)).plan_expired).toBe(true);
    const future = new Date(Date.now() + 86_400_000).toISOString();
    expect((await admin("PATCH", `/v1/tenants/${t.slug}`, { plan_expires_at: future })).status).toBe(200);
    await waitFor(
      async () => (await authed(t.slug, t.token, "/api/projects", { method: "POST", body: { name: "y" } })).status === 201,
      "the renewal to take effect",
      15_000,
    );
  });

  test("bad quota and expiry values are 422 and change nothing", async () => {
    const t = await createTenant();
    for (const body of [
      { quotas: { api_calls_per_month: -1 } },
      { quotas: { storage_bytes: 1.5 } },
      { quotas: { rows: 5 } },
      { quotas: "lots" },
      { plan_expires_at: "tomorrow" },
      { plan_expires_at: 12 },
    ]) {
      const res = await admin("PATCH", `/v1/tenants/${t.slug}`, body);
      expect(res.status, JSON.stringify(body)).toBe(422);
      expect(Object.keys(res.json.error.fields)).toEqual(Object.keys(body));
    }
    const now = (await admin("GET", `/v1/tenants/${t.slug}`)).json.tenant;
    expect(now.plan_expires_at).toBeNull();
    expect(now.own_quotas).toBeNull();
  });
});
