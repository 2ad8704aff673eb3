// What every end-to-end test uses: the shared stack's addresses, an HTTP client that can set the
// Host header (Node's fetch cannot, and `*.localhost` does not resolve in Node), the local
// cloud's API client, and fresh tenants.

import { inject, vi } from "vitest";
import { setBindings as setBindingsWith, tenantBindings as tenantBindingsWith } from "../cloud/provision.mjs";
import { adminClient, hostRequest } from "../cloud/client.mjs";
import { apiClient } from "../cloud/stack.mjs";

export const stack = inject("stack");

/**
 * A client of the local cloud's Cloudflare API (`apiClient` in cloud/stack.mjs): resolves with the
 * JSON envelope (`{ success, result, ... }`), or with the `Response` itself when `raw` is set.
 * @typedef {(method: string, route: string, body?: unknown, opts?: { multipart?: boolean, raw?: boolean }) => Promise<any>} CloudApi
 */

/** @type {CloudApi} */
export const api = apiClient(stack.cloudUrl, { token: stack.token, accountId: stack.accountId });

/**
 * What `request` takes besides the host and path; `body` is sent as JSON unless it is a string.
 * @typedef {{ method?: string, headers?: Record<string, string>, body?: unknown }} RequestOptions
 */

/**
 * Sends a request to the Worker as if to `host` (e.g. `acme.localhost`).
 * @param {string} host
 * @param {string} pathname
 * @param {RequestOptions} [opts]
 * @returns {Promise<{ status: number, headers: Record<string, string>, text: string, json: any }>}
 */
export function request(host, pathname, opts) {
  return hostRequest(stack.port, host, pathname, opts);
}

/** A slug no other test uses. */
let counter = 0;
export function freshSlug(prefix = "t") {
  counter++;
  return `${prefix}-${process.pid.toString(36)}-${Date.now().toString(36)}-${counter}`.slice(0, 40).replace(/-+$/, "");
}

/** Calls the admin API on the apex host. */
export const admin = adminClient(stack.url, stack.adminToken);

export const ADMIN_PASSWORD = "a long enough password";

/** Polls the tenant (GET carries its operation forward) until it is `status`; resolves with it. */
export function waitForStatus(slug, status, timeoutMs = 30_000) {
  return vi.waitFor(
    async () => {
      const res = await admin("GET", `/v1/tenants/${slug}`);
      if (res.json?.tenant?.status !== status) throw new Error(`timed out waiting for tenant ${slug} to be ${status} (last: ${res.text})`);
      return res.json.tenant;
    },
    { timeout: timeoutMs, interval: 100 },
  );
}

/** Signs in on tenant `slug`; returns the token (throws unless 200). */
export async function login(slug, email, password = ADMIN_PASSWORD) {
  const res = await request(`${slug}.localhost`, "/api/auth/login", { method: "POST", body: { email, password } });
  if (res.status !== 200) throw new Error(`login ${email} on ${slug}: ${res.status} ${res.text}`);
  return res.json.token;
}

/** `request` on tenant `slug`'s host with a bearer token. */
export function authed(slug, token, path, opts = {}) {
  return request(`${slug}.localhost`, path, { ...opts, headers: { authorization: `Bearer ${token}`, ...(opts.headers ?? {}) } });
}

/**
 * Creates a tenant through the admin API, waits until it is active and serving, and signs its
 * first admin in. Returns { slug, uuid, binding, tenant, email, token }.
 */
export async function createTenant(slug = freshSlug(), { plan = "free" } = {}) {
  const email = `admin@${slug}.test`;
  const res = await admin("POST", "/v1/tenants", { slug, name: `Tenant ${slug}`, plan, admin: { email, password: ADMIN_PASSWORD } });
  if (![201, 202].includes(res.status)) throw new Error(`create ${slug}: ${res.status} ${res.text}`);
  const tenant = await waitForStatus(slug, "active");
  const token = await vi.waitFor(
    async () => {
      const r = await request(`${slug}.localhost`, "/api/auth/login", { method: "POST", body: { email, password: ADMIN_PASSWORD } });
      if (r.status !== 200) throw new Error(`timed out waiting for tenant ${slug} to serve (last: ${r.status} ${r.text})`);
      return r.json.token;
    },
    { timeout: 20_000, interval: 100 },
  );
  return { slug, uuid: tenant.database.id, binding: tenant.binding, tenant, email, token };
}

/** Fires the Worker's cron trigger once (what Cloudflare does every 5 minutes). */
export async function cron() {
  const res = await fetch(`${stack.cloudUrl}/__cloud/scheduled`, { method: "POST", headers: { authorization: `Bearer ${stack.token}` } });
  const { result } = /** @type {{ result: any }} */ (await res.json());
  return result;
}

/** Runs SQL on a database through the local cloud's query endpoint. */
export async function sql(uuid, statement, params) {
  return (await api("POST", `/d1/database/${uuid}/query`, params ? { sql: statement, params } : { sql: statement })).result;
}

/** Rewrites the Worker's bindings through the local cloud (see cloud/provision.mjs). */
/** Rewrites the main Worker's bindings (or binding host `host`'s) to `change(current)`. */
export const setBindings = (change, host = undefined) => setBindingsWith(api, change, host);

/** Every tenant D1 binding, wherever it is: `[{ script, name, id }]` (`script`: "main" or a host). */
export const tenantBindings = () => tenantBindingsWith(api);

/**
 * Polls `check` every 100 ms until it returns something truthy (vi.waitUntil), and resolves with
 * it: the test fails after `timeoutMs`, or at once when `check` throws.
 * @template T
 * @param {() => T | Promise<T>} check
 * @param {string} what what is waited for, for the message
 * @returns {Promise<T>}
 */
export async function waitFor(check, what, timeoutMs = 20_000) {
  return vi.waitUntil(check, { timeout: timeoutMs, interval: 100, message: `waiting for ${what}` });
}

/** Sets fault rules on the local cloud (replacing any). */
export async function setFaults(rules, seed) {
  const headers = { authorization: `Bearer ${stack.token}`, "content-type": "application/json" };
  await fetch(`${stack.cloudUrl}/__cloud/faults`, { method: "DELETE", headers });
  if (rules.length) {
    const r = await fetch(`${stack.cloudUrl}/__cloud/faults`, { method: "POST", headers, body: JSON.stringify({ rules, seed }) });
    if (!r.ok) throw new Error(`setting faults failed: ${await r.text()}`);
  }
}
