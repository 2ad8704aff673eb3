// `npm run migrate`: bring every tenant database to the deployed Worker's schema, through the
// admin API of a local or deployed instance, with a line per tenant and a summary.
//
//   npm run migrate -- [--url URL] [--token TOKEN] [--concurrency N] [--limit N]
//
// URL defaults to $TENANTRY_URL or the local dev stack (http://localhost:8787); TOKEN to
// $TENANTRY_ADMIN_TOKEN or the local stack's admin token. Exit code 1 when a tenant failed.

import { parseArgs } from "node:util";
import { adminClient } from "../cloud/client.mjs";

const { values } = parseArgs({
  options: {
    url: { type: "string", default: process.env.TENANTRY_URL ?? "http://localhost:8787" },
    token: { type: "string", default: process.env.TENANTRY_ADMIN_TOKEN ?? "tenantry-local-admin-token" },
    concurrency: { type: "string" },
    limit: { type: "string", default: "50" },
  },
});
const admin = adminClient(values.url.replace(/\/$/, ""), values.token);

/**
 * Calls the admin API; resolves with the response's JSON, throws unless 2xx.
 * @param {string} method
 * @param {string} path
 * @param {unknown} [body]
 * @returns {Promise<any>}
 */
async function call(method, path, body) {
  const res = await admin(method, path, body);
  if (res.status < 200 || res.status > 299)
    throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(res.json?.error ?? res.text)}`);
  return res.json;
}

const before = await call("GET", "/v1/migrations/status");
const total = before.behind + before.failures.filter((f) => f.schema_version >= before.latest).length;
console.log(`tenant schema: latest version ${before.latest} (${before.migrations.at(-1)}); ${before.behind} tenant(s) behind`);

let after = null;
let done = 0;
const failed = [];
const started = performance.now();
do {
  const body = { after, limit: Number(values.limit), ...(values.concurrency ? { concurrency: Number(values.concurrency) } : {}) };
  const pass = await call("POST", "/v1/migrations/apply", body);
  for (const t of pass.migrated) console.log(`  ✓ ${t.slug} → version ${t.version}   [${++done}/${total}]`);
  for (const t of pass.failed) {
    console.log(`  ✗ ${t.slug} stays at version ${t.version}: ${t.error}   [${++done}/${total}]`);
    failed.push(t);
  }
  after = pass.next;
} while (after);

const status = await call("GET", "/v1/migrations/status");
const seconds = ((performance.now() - started) / 1000).toFixed(1);
console.log(`\ndone in ${seconds} s: ${done - failed.length} migrated, ${failed.length} failed`);
console.log(
  `tenants by version: ${
    Object.entries(status.tenants_by_version)
      .map(([v, n]) => `v${v}: ${n}`)
      .join(", ") || "none"
  }`,
);
if (failed.length) {
  console.log("failures (recorded on each tenant; fix and run again):");
  for (const f of status.failures) console.log(`  ${f.slug} (v${f.schema_version}): ${f.migration_error}`);
  process.exit(1);
}
