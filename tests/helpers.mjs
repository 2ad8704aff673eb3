// What every end-to-end test uses: the shared stack's addresses, an HTTP client that can set the
// Host header (Node's fetch cannot, and `*.localhost` does not resolve in Node), the local
// cloud's API client, and fresh tenants.

import http from "node:http";
import { inject } from "vitest";
import { provisionTenant, setBindings as setBindingsWith } from "../cloud/provision.mjs";
import { apiClient } from "../cloud/stack.mjs";

export const stack = inject("stack");
export const api = apiClient(stack.cloudUrl, { token: stack.token, accountId: stack.accountId });

/**
 * Sends a request to the Worker as if to `host` (e.g. `acme.localhost`).
 * @returns {Promise<{ status: number, headers: Record<string, string>, text: string, json: any }>}
 */
export function request(host, pathname, { method = "GET", headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: "127.0.0.1", port: stack.port, path: pathname, method, headers: { host: `${host}:${stack.port}`, ...headers } },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let json;
          try {
            json = JSON.parse(text);
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode, headers: res.headers, text, json });
        });
      },
    );
    req.on("error", reject);
    if (body !== undefined) req.write(typeof body === "string" ? body : JSON.stringify(body));
    req.end();
  });
}

/** A slug no other test uses. */
let counter = 0;
export function freshSlug(prefix = "t") {
  counter++;
  return `${prefix}-${process.pid.toString(36)}-${Date.now().toString(36)}-${counter}`.slice(0, 40).replace(/-+$/, "");
}

/** Creates, migrates, stamps and binds a new tenant through the local cloud. */
export async function createTenant(slug = freshSlug()) {
  const t = await provisionTenant(api, slug);
  await waitFor(async () => (await request(`${slug}.localhost`, "/api/tenant")).status === 200, `tenant ${slug} to answer`);
  return { slug, ...t };
}

/** Runs SQL on a database through the local cloud's query endpoint. */
export async function sql(uuid, statement, params) {
  return (await api("POST", `/d1/database/${uuid}/query`, params ? { sql: statement, params } : { sql: statement })).result;
}

/** Rewrites the Worker's bindings through the local cloud (see cloud/provision.mjs). */
export const setBindings = (change) => setBindingsWith(api, change);

/** Polls `check` until it returns true (bounded: the test fails after `timeoutMs`). */
export async function waitFor(check, what, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
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
