// The admin API and the tenant lifecycle: create (resumable, idempotent), read, update,
// suspend, delete with a verified backup, concurrency, orphans, and bindings that survive a deploy.

import { pbkdf2Sync } from "node:crypto";
import { afterEach, describe, expect, test } from "vitest";
import { tenantMigrations } from "../../cloud/provision.mjs";
import {
  ADMIN_PASSWORD,
  admin,
  api,
  authed,
  createTenant,
  cron,
  freshSlug,
  login,
  request,
  setBindings,
  setFaults,
  sql,
  stack,
  tenantBindings,
  waitFor,
  waitForStatus,
} from "../helpers.mjs";

/** What an unauthenticated request to a live tenant gets: routed, database verified, then 401. */
const serving = async (slug) => (await request(`${slug}.localhost`, "/api/tenant")).status === 401;

const body = (slug, extra = {}) => ({
  slug,
  name: `Tenant ${slug}`,
  plan: "pro",
  admin: { email: `owner@${slug}.test`, password: ADMIN_PASSWORD },
  ...extra,
});
const settingsNames = async () => (await tenantBindings()).map((b) => b.name);

describe("admin API guards", () => {
  test("no token or a wrong token is a 401 with WWW-Authenticate", async () => {
    for (const token of ["", "wrong", `${stack.adminToken}x`]) {
      const res = await admin("GET", "/v1/tenants", undefined, { token });
      expect(res.status).toBe(401);
      expect(res.json.error.code).toBe("unauthorized");
      expect(res.headers.get("www-authenticate")).toBe("Bearer");
    }
    expect((await admin("GET", "/v1/tenants")).status).toBe(200);
  });

  test("bad bodies: 400 for malformed JSON, 413 for oversized, 422 with every bad field", async () => {
    expect((await admin("POST", "/v1/tenants", "{not json")).json.error.code).toBe("invalid_json");
    expect((await admin("POST", "/v1/tenants", "[1, 2]")).status).toBe(400);
    const big = await admin("POST", "/v1/tenants", JSON.stringify({ slug: "x".repeat(70_000) }));
    expect(big.status).toBe(413);
    const res = await admin("POST", "/v1/tenants", { slug: "Bad!", name: "", plan: "gold", admin: { email: "nope", password: "short" } });
    expect(res.status).toBe(422);
    expect(res.json.error.code).toBe("validation_failed");
    expect(Object.keys(res.json.error.fields).sort()).toEqual(["admin.email", "admin.password", "name", "plan", "slug"]);
    expect((await admin("POST", "/v1/tenants", { ...body("www") })).json.error.fields.slug).toMatch(/reserved/);
  });

  test("unknown tenants are 404, unknown routes 404, wrong methods 405", async () => {
    expect((await admin("GET", "/v1/tenants/no-such-tenant")).json.error.code).toBe("tenant_not_found");
    expect((await admin("GET", "/v1/tenants/NOT%20A%20SLUG")).status).toBe(404);
    expect((await admin("DELETE", "/v1/tenants/no-such-tenant")).status).toBe(404);
    expect((await admin("GET", "/v1/nothing")).status).toBe(404);
    expect((await admin("PUT", "/v1/tenants")).status).toBe(405);
    const listBad = await admin("GET", "/v1/tenants?limit=0");
    expect(listBad.status).toBe(400);
    expect((await admin("GET", "/v1/tenants?status=sleeping")).status).toBe(400);
  });
});

describe("create", () => {
  test("create runs the saga to active; the same create again is a 201; another body is a 409", async () => {
    const slug = freshSlug("create");
    const first = await admin("POST", "/v1/tenants", body(slug));
    expect([201, 202]).toContain(first.status);
    expect(first.headers.get("location")).toBe(`/v1/tenants/${slug}`);
    expect(first.json.tenant).toMatchObject({ slug, plan: "pro", database: { name: `tenantry-${slug}` } });
    if (first.status === 202) expect(first.json.operation).toMatchObject({ kind: "create" });
    const tenant = await waitForStatus(slug, "active");
    expect(tenant.schema_version).toBe(tenantMigrations().length);

    const again = await admin("POST", "/v1/tenants", body(slug));
    expect(again.status).toBe(201);
    expect(again.json.tenant.database.id).toBe(tenant.database.id);
    const other = await admin("POST", "/v1/tenants", body(slug, { name: "Someone else" }));
    expect(other.status).toBe(409);
    expect(other.json.error.code).toBe("tenant_exists");

    // One database of that name, bound, answering, with the first admin seeded and hashed.
    const dbs = (await api("GET", `/d1/database?name=tenantry-${slug}`)).result.filter((d) => d.name === `tenantry-${slug}`);
    expect(dbs).toHaveLength(1);
    expect(await settingsNames()).toContain(tenant.binding);
    expect(await login(slug, `owner@${slug}.test`)).toMatch(/^ey/);
    const [users] = await sql(tenant.database.id, "SELECT email, role, password_hash FROM users");
    expect(users.results).toHaveLength(1);
    const { email, role, password_hash } = users.results[0];
    expect({ email, role }).toEqual({ email: `owner@${slug}.test`, role: "admin" });
    const [, scheme, iterations, salt, hash] = password_hash.split("$");
    expect(scheme).toBe("pbkdf2-sha256");
    const derived = pbkdf2Sync(ADMIN_PASSWORD, Buffer.from(salt, "base64"), Number(iterations.slice(2)), 32, "sha256");
    expect(derived.toString("base64").replace(/=+$/, "")).toBe(hash);

    // The password hash does not stay in the control plane once seeded.
    const [ops] = await sql(stack.controlDatabaseId, "SELECT input FROM operations WHERE tenant_slug = ?1", [slug]);
    expect(ops.results.map((r) => r.input).join()).not.toContain("pbkdf2");
    const history = await admin("GET", `/v1/tenants/${slug}/operations`);
    expect(history.json.operations[0]).toMatchObject({
      kind: "create",
      state: "succeeded",
      steps_done: ["database", "place", "bind", "migrations", "seed", "verify"],
    });
    expect(history.text).not.toContain("pbkdf2");
  });

  test("a lost create answer and API faults do not leave duplicates; the operation resumes", async () => {
    const slug = freshSlug("faulty");
    await setFaults([
      { endpoint: "d1.create", kind: "lose_response", times: 1 },
      { endpoint: "d1.query", kind: "error", status: 503, times: 2 },
      { endpoint: "scripts.settings.patch", kind: "rate_limit", retry_after: 1, times: 1 },
    ]);
    const res = await admin("POST", "/v1/tenants", body(slug));
    expect([201, 202]).toContain(res.status);
    await setFaults([]);
    await waitForStatus(slug, "active");
    const dbs = (await api("GET", `/d1/database?name=tenantry-${slug}`)).result.filter((d) => d.name === `tenantry-${slug}`);
    expect(dbs).toHaveLength(1);
  });

  test("a create cut short by a failing API stays resumable: re-sending it finishes it", async () => {
    const slug = freshSlug("resume");
    await setFaults([{ endpoint: "dispatch.scripts.settings.patch", kind: "error", status: 500 }]);
    const res = await admin("POST", "/v1/tenants", body(slug));
    await setFaults([]);
    expect(res.status).toBe(202);
    expect(res.json.tenant.status).toBe("provisioning");
    expect(res.json.operation.last_error).toMatch(/dispatch\.scripts\.settings\.patch/);
    expect(res.json.operation.steps_done).toEqual(["database", "place"]);
    const again = await admin("POST", "/v1/tenants", body(slug));
    expect([201, 202]).toContain(again.status);
    await waitForStatus(slug, "active");
  });
});

describe("list, update, suspend", () => {
  test("list paginates by slug with a cursor and filters by status", async () => {
    const tag = freshSlug("list");
    const slugs = [`${tag}-a`, `${tag}-b`, `${tag}-c`];
    for (const s of slugs) await createTenant(s);
    await admin("PATCH", `/v1/tenants/${slugs[1]}`, { status: "suspended", message: "unpaid invoice" });
    const seen = [];
    // From just before this test's slugs (the shared stack holds hundreds of others) to past them.
    let cursor = tag.slice(0, -1);
    for (let i = 0; i < 100; i++) {
      const page = await admin("GET", `/v1/tenants?limit=2${cursor ? `&cursor=${cursor}` : ""}`);
      expect(page.json.tenants.length).toBeLessThanOrEqual(2);
      seen.push(...page.json.tenants.map((t) => t.slug));
      if (!page.json.next_cursor || seen.at(-1) > slugs[2]) break;
      cursor = page.json.next_cursor;
    }
    expect(seen).toEqual([...seen].sort());
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen).toEqual(expect.arrayContaining(slugs));
    const suspended = await admin("GET", "/v1/tenants?status=suspended&limit=200");
    expect(suspended.json.tenants.map((t) => t.slug)).toContain(slugs[1]);
    expect(suspended.json.tenants.every((t) => t.status === "suspended")).toBe(true);
  });

  test("PATCH changes name and plan, suspends with a message and resumes; bad values are 422", async () => {
    const { slug } = await createTenant();
    const renamed = await admin("PATCH", `/v1/tenants/${slug}`, { name: "Renamed", plan: "enterprise" });
    expect(renamed.json.tenant).toMatchObject({ name: "Renamed", plan: "enterprise" });
    const suspended = await admin("PATCH", `/v1/tenants/${slug}`, { status: "suspended", message: "unpaid" });
    expect(suspended.json.tenant).toMatchObject({ status: "suspended", status_message: "unpaid" });
    expect((await admin("PATCH", `/v1/tenants/${slug}`, { status: "active" })).json.tenant.status).toBe("active");
    const bad = await admin("PATCH", `/v1/tenants/${slug}`, { plan: "gold", status: "deleted", colour: "red" });
    expect(bad.status).toBe(422);
    expect(Object.keys(bad.json.error.fields).sort()).toEqual(["colour", "plan", "status"]);
  });
});

describe("delete", () => {
  test("delete backs up, unbinds and drops the database; the backup re-imports; the slug needs recreate", async () => {
    const { slug, uuid, binding, token } = await createTenant();
    await sql(uuid, "INSERT INTO projects (name) VALUES ('keep me'), ('and me')");
    const res = await admin("DELETE", `/v1/tenants/${slug}`);
    expect([200, 202]).toContain(res.status);
    const tenant = await waitForStatus(slug, "deleted");
    expect(tenant.deleted_at).toBeTruthy();
    expect(tenant.backup).toMatchObject({ location: expect.stringMatching(/^r2:\/\/BACKUPS\//) });

    // The database is gone, the binding too, the host no longer answers.
    expect((await api("GET", `/d1/database/${uuid}`, undefined, { raw: true })).status).toBe(404);
    expect(await settingsNames()).not.toContain(binding);
    await waitFor(async () => (await request(`${slug}.localhost`, "/api/tenant")).status === 404, "the tenant host to stop answering");

    // The backup is the tenant's data, verifiable and restorable.
    const backup = await admin("GET", `/v1/tenants/${slug}/backup`);
    expect(backup.status, backup.text).toBe(200);
    const dump = backup.text;
    const { createHash } = await import("node:crypto");
    expect(createHash("sha256").update(dump).digest("hex")).toBe(tenant.backup.sha256);
    expect(Buffer.byteLength(dump)).toBe(tenant.backup.bytes);
    const restored = (await api("POST", "/d1/database", { name: `restore-${slug}` })).result;
    await sql(restored.uuid, dump);
    expect((await sql(restored.uuid, "SELECT name FROM projects ORDER BY id"))[0].results).toEqual([
      { name: "keep me" },
      { name: "and me" },
    ]);
    await api("DELETE", `/d1/database/${restored.uuid}`);

    // Deleting again is a no-op; creating again needs the explicit word.
    expect((await admin("DELETE", `/v1/tenants/${slug}`)).status).toBe(200);
    const blocked = await admin("POST", "/v1/tenants", body(slug));
    expect(blocked.status).toBe(409);
    expect(blocked.json.error.code).toBe("tenant_deleted");
    expect((await admin("POST", "/v1/tenants", body(slug, { recreate: true }))).status).toBeLessThan(300);
    await waitForStatus(slug, "active");
    // The earlier tenant's tokens do not open the new one (same slug, same user ids, new database).
    await waitFor(
      async () =>
        (await request(`${slug}.localhost`, "/api/auth/login", { method: "POST", body: { email: "x@x.test", password: "not it at all" } }))
          .status === 401,
      "the new tenant to serve",
    );
    const stale = await authed(slug, token, "/api/me");
    expect(stale.status, stale.text).toBe(401);
    expect(stale.json.error.message).toMatch(/earlier tenant/);
    expect((await authed(slug, await login(slug, `owner@${slug}.test`), "/api/me")).status).toBe(200);
  });

  test("a failing delete is retried by the reconciler until done, nothing swallowed", async () => {
    const { slug, uuid } = await createTenant();
    await setFaults([{ endpoint: "d1.delete", kind: "error", status: 500 }]);
    const res = await admin("DELETE", `/v1/tenants/${slug}`);
    expect(res.status).toBe(202);
    expect(res.json.tenant.status).toBe("deleting");
    expect(res.json.tenant.last_error).toMatch(/d1\.delete/);
    expect(res.json.operation.steps_done).toEqual(["backup", "unbind"]);
    await setFaults([]);
    const report = await admin("POST", "/v1/reconcile");
    expect(report.status).toBe(200);
    expect(report.json.operations.finished).toBeGreaterThanOrEqual(1);
    expect((await admin("GET", `/v1/tenants/${slug}`)).json.tenant.status).toBe("deleted");
    expect((await api("GET", `/d1/database/${uuid}`, undefined, { raw: true })).status).toBe(404);
  });
  test("a failing backup write (an R2 put fault) stops the delete before it unbinds; the reconciler finishes it", async () => {
    const { slug, uuid, binding } = await createTenant();
    await setFaults([{ endpoint: "r2.put", kind: "error" }]);
    const res = await admin("DELETE", `/v1/tenants/${slug}`);
    expect(res.status).toBe(202);
    expect(res.json.tenant.status).toBe("deleting");
    expect(res.json.tenant.last_error).toMatch(/We encountered an internal error/);
    expect(res.json.operation.steps_done).toEqual([]);
    // Nothing was undone yet: still bound, the database still there.
    expect(await settingsNames()).toContain(binding);
    expect((await api("GET", `/d1/database/${uuid}`, undefined, { raw: true })).status).toBe(200);
    await setFaults([]);
    expect((await admin("POST", "/v1/reconcile")).status).toBe(200);
    const tenant = (await admin("GET", `/v1/tenants/${slug}`)).json.tenant;
    expect(tenant.status).toBe("deleted");
    expect(tenant.backup).toMatchObject({ location: expect.stringMatching(/^r2:\/\/BACKUPS\//) });
    expect((await admin("GET", `/v1/tenants/${slug}/backup`)).status).toBe(200);
  });
});

describe("bindings and the reconciler", () => {
  afterEach(() => setFaults([]));

  test("50 tenants created concurrently all end active and bound", { timeout: 240_000 }, async () => {
    const tag = freshSlug("many");
    const slugs = Array.from({ length: 50 }, (_, i) => `${tag}-${i}`);
    const answers = await Promise.all(slugs.map((s) => admin("POST", "/v1/tenants", body(s))));
    expect(answers.map((a) => a.status).filter((s) => s !== 201 && s !== 202)).toEqual([]);
    for (const s of slugs) await waitForStatus(s, "active", 120_000);
    const names = await settingsNames();
    const bound = slugs.filter((s) => names.includes(`TENANT_${s.toUpperCase().replaceAll("-", "_")}`));
    console.log(`concurrent creates: ${slugs.length} requested, ${bound.length} active and bound`);
    expect(bound).toHaveLength(50);
    const answering = await Promise.all(slugs.map((s) => serving(s)));
    expect(answering).toEqual(slugs.map(() => true));
  });

  test("bindings dropped from a binding host are restored by the cron reconciler", async () => {
    const { slug, tenant } = await createTenant();
    // A hand edit of the host's binding set.
    await setBindings((bindings) => bindings.filter((b) => !b.name.startsWith("TENANT_")), tenant.host);
    await waitFor(async () => (await request(`${slug}.localhost`, "/api/tenant")).status === 503, "the deploy to drop the binding");
    expect((await cron()).outcome).toBe("ok");
    await waitFor(() => serving(slug), "the reconciler to restore the binding");
  });

  test("the orphan scan reports databases with our prefix that no tenant owns", async () => {
    const name = `tenantry-${freshSlug("orphan")}`;
    const orphan = (await api("POST", "/d1/database", { name })).result;
    const report = await admin("POST", "/v1/reconcile");
    expect(report.json.orphans.found).toContain(name);
    expect(report.json.orphans.removed).toEqual([]);
    expect(report.json.bindings.converged).toBe(true);
    await api("DELETE", `/d1/database/${orphan.uuid}`);
    expect((await admin("POST", "/v1/reconcile")).json.orphans.found).not.toContain(name);
  });

  test("with ORPHAN_POLICY=remove the reconciler deletes orphans, and only orphans", async () => {
    const { slug, uuid } = await createTenant();
    const name = `tenantry-${freshSlug("orphan")}`;
    const orphan = (await api("POST", "/d1/database", { name })).result;
    const policy = (text) =>
      setBindings((bs) => [...bs.filter((b) => b.name !== "ORPHAN_POLICY"), { type: "plain_text", name: "ORPHAN_POLICY", text }]);
    await policy("remove");
    try {
      await waitFor(async () => {
        const report = await admin("POST", "/v1/reconcile");
        return report.json.orphans.removed.includes(name);
      }, "the orphan to be removed");
      expect((await api("GET", `/d1/database/${orphan.uuid}`, undefined, { raw: true })).status).toBe(404);
      expect((await api("GET", `/d1/database/${uuid}`)).result.uuid).toBe(uuid);
      expect(await serving(slug)).toBe(true);
    } finally {
      await policy("report");
    }
  });
});

describe("deploy", () => {
  test("the deploy script binds the hosts' namespace and puts no host-served tenant on the main Worker", async () => {
    const { slug, binding, uuid } = await createTenant();
    const { spawnSync } = await import("node:child_process");
    const path = await import("node:path");
    const { ROOT } = await import("../../cloud/stack.mjs");
    const out = spawnSync(process.execPath, [path.join(ROOT, "scripts", "deploy.mjs"), "--dry-run"], {
      cwd: ROOT,
      encoding: "utf8",
      env: {
        ...process.env,
        CLOUDFLARE_API_BASE_URL: stack.apiBase,
        CLOUDFLARE_API_TOKEN: stack.token,
        CLOUDFLARE_ACCOUNT_ID: stack.accountId,
        CI: "true",
      },
    });
    expect(out.status, out.stderr).toBe(0);
    const config = JSON.parse(out.stdout.slice(out.stdout.indexOf("{")));
    // The tenant is served through its binding host: the main Worker's config does not bind it.
    expect(config.d1_databases).not.toContainEqual({ binding, database_name: `tenantry-${slug}`, database_id: uuid });
    expect(config.dispatch_namespaces).toEqual([{ binding: "HOSTS_DISPATCHER", namespace: "tenantry-hosts" }]);
    expect(config.d1_databases.find((d) => d.binding === "CONTROL_DB")).toBeTruthy();
    expect(config.triggers.crons).toEqual(["*/5 * * * *"]);
  });
});
