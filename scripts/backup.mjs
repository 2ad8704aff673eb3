// `npm run backup`: back up every tenant that is due now, through the admin API of a local or
// deployed instance: the scheduled fan-out's passes, run until none is left, a line per tenant
// and a summary. The cron runs the same passes on its own (25 tenants a pass).
//
//   npm run backup -- [--url URL] [--token TOKEN] [--concurrency N] [--limit N] [--all]
//
// `--all` backs up every tenant in service now, however recent its last backup (else: those
// whose last backup is older than BACKUP_INTERVAL_HOURS). URL defaults to $TENANTRY_URL or the
// local dev stack (http://localhost:8787); TOKEN to $TENANTRY_ADMIN_TOKEN or the local stack's
// admin token. Exit code 1 when a tenant failed (its error is recorded on it; the next pass
// tries again).

import { parseArgs } from "node:util";
import { adminClient } from "../cloud/client.mjs";

const { values } = parseArgs({
  options: {
    url: { type: "string", default: process.env.TENANTRY_URL ?? "http://localhost:8787" },
    token: { type: "string", default: process.env.TENANTRY_ADMIN_TOKEN ?? "tenantry-local-admin-token" },
    concurrency: { type: "string" },
    limit: { type: "string", default: "50" },
    all: { type: "boolean", default: false },
  },
});
const admin = adminClient(values.url.replace(/\/$/, ""), values.token);

/**
 * One pass; throws unless 2xx.
 * @param {Record<string, unknown>} body
 * @returns {Promise<any>}
 */
async function pass(body) {
  const res = await admin("POST", "/v1/backups/run", body);
  if (res.status < 200 || res.status > 299)
    throw new Error(`POST /v1/backups/run: ${res.status} ${JSON.stringify(res.json?.error ?? res.text)}`);
  return res.json;
}

const body = {
  limit: Number(values.limit),
  ...(values.concurrency ? { concurrency: Number(values.concurrency) } : {}),
  // `--all`: due when last backed up before this run started (so the run ends).
  ...(values.all ? { before: new Date().toISOString() } : {}),
};
const started = performance.now();
const failed = new Map();
let done = 0;
let bytes = 0;
for (;;) {
  const report = await pass(body);
  for (const t of report.backed_up) {
    bytes += t.bytes ?? 0;
    console.log(
      `  ✓ ${t.slug}: ${t.bytes} bytes${t.pruned ? `, ${t.pruned} old backup(s) pruned` : ""}   [${++done} done, ${report.remaining} left]`,
    );
  }
  for (const t of report.failed) {
    console.log(`  ✗ ${t.slug}: ${t.error}`);
    failed.set(t.slug, t.error);
  }
  // A pass that backed nothing up makes no progress (every tenant left is failing): stop.
  if (report.remaining === 0 || report.backed_up.length === 0) break;
}
const seconds = ((performance.now() - started) / 1000).toFixed(1);
console.log(`\ndone in ${seconds} s: ${done} backed up (${(bytes / 1e6).toFixed(1)} MB), ${failed.size} failing`);
if (failed.size) {
  console.log("failing tenants (each keeps its error; the next pass tries again):");
  for (const [slug, error] of failed) console.log(`  ${slug}: ${error}`);
  process.exit(1);
}
