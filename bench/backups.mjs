// The backups and restores part of `npm run bench` (after bench/run.mjs): the scheduled backup
// fan-out over a fleet, and the time to restore (RTO) tenants of growing size by each path, on
// the local stack (Miniflare's D1 and R2, the local cloud's export, import and Time Travel).
// Prints a Markdown table and writes .tenantry/bench-backups/results.json.
//
// Knobs (environment): BENCH_BACKUP_FLEET (1000) tenants in the fan-out, BENCH_BACKUP_CONCURRENCY
// (8) at once per pass, BENCH_RTO_MB ("1,100") the tenant sizes, in MB of project rows.

import { mkdir, rm, writeFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import pLimit from "p-limit";
import { adminClient, hostRequest } from "../cloud/client.mjs";
import { ROOT, startStack } from "../cloud/stack.mjs";

const knob = (name, fallback) => process.env[name] ?? fallback;
const FLEET = Number(knob("BENCH_BACKUP_FLEET", 1000));
const CONCURRENCY = Number(knob("BENCH_BACKUP_CONCURRENCY", 8));
const SIZES_MB = String(knob("BENCH_RTO_MB", "1,100"))
  .split(",")
  .map(Number)
  .filter((n) => n > 0);
const PASSWORD = "a benchmark password";
const STATE_DIR = path.join(ROOT, ".tenantry", "bench-backups");
/** Bytes of one filler row's description (a row is about this plus 60 bytes). */
const ROW_BYTES = 1000;

const progress = (msg) => process.stderr.write(`[bench backups] ${msg}\n`);
const fmt = (n, digits = 0) => Number(n).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });

/** @type {Awaited<ReturnType<typeof startStack>>} */
let stack;
/** @type {ReturnType<typeof adminClient>} */
let admin;

/** @param {string} slug @param {string} pathname @param {any} [opts] */
const tenantRequest = (slug, pathname, opts) => hostRequest(Number(new URL(stack.url).port), `${slug}.localhost`, pathname, opts);

/** Polls until `check()` is true; throws after `timeoutMs`. */
async function until(check, what, timeoutMs = 600_000, pollMs = 50) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await sleep(pollMs);
  }
}

/** Creates tenant `slug` and waits until it serves. */
async function create(slug) {
  const res = await admin("POST", "/v1/tenants", { slug, name: slug, admin: { email: `a@${slug}.test`, password: PASSWORD } });
  if (![201, 202].includes(res.status)) throw new Error(`create ${slug}: ${res.status} ${res.text}`);
  await until(async () => (await admin("GET", `/v1/tenants/${slug}`)).json.tenant.status === "active", `${slug} active`, 120_000);
  await until(async () => (await signIn(slug)) !== null, `${slug} serving`, 120_000);
}

/** A token for the tenant's admin, or null while it does not serve. */
async function signIn(slug) {
  const r = await tenantRequest(slug, "/api/auth/login", { method: "POST", body: { email: `a@${slug}.test`, password: PASSWORD } });
  return r.status === 200 ? r.json.token : null;
}

/** Rows of `sql` run on database `id` through the local cloud. */
async function cloudSql(id, sql, params = []) {
  return (await stack.api("POST", `/d1/database/${id}/query`, { sql, params })).result;
}

/** Runs restore `body` on `slug` and times it until the operation closed and the tenant serves. */
async function timedRestore(slug, body) {
  const started = performance.now();
  const res = await admin("POST", `/v1/tenants/${slug}/restore`, body);
  if (![200, 202].includes(res.status)) throw new Error(`restore ${slug}: ${res.status} ${res.text}`);
  let op;
  await until(async () => {
    await admin("GET", `/v1/tenants/${slug}`);
    op = (await admin("GET", `/v1/tenants/${slug}/operations`)).json.operations[0];
    return !["pending", "running"].includes(op.state);
  }, `the restore of ${slug}`);
  if (op.state !== "succeeded") throw new Error(`restore ${slug} ${op.state}: ${op.last_error}`);
  await until(async () => (await signIn(slug)) !== null, `${slug} serving after its restore`);
  return (performance.now() - started) / 1000;
}

async function fanOut() {
  progress(`fleet: creating ${FLEET} tenants, 16 at a time`);
  const limit = pLimit(16);
  const slugs = Array.from({ length: FLEET }, (_, i) => `bfleet-${String(i).padStart(4, "0")}`);
  let done = 0;
  await Promise.all(
    slugs.map((slug) =>
      limit(async () => {
        await create(slug);
        if (++done % 100 === 0) progress(`fleet: ${done}/${FLEET}`);
      }),
    ),
  );
  progress(`backup fan-out over ${FLEET} tenants, ${CONCURRENCY} at a time`);
  const started = performance.now();
  let passes = 0;
  let backedUp = 0;
  let bytes = 0;
  const failures = [];
  const before = new Date().toISOString();
  for (;;) {
    const res = await admin("POST", "/v1/backups/run", { before, limit: 200, concurrency: CONCURRENCY });
    if (res.status !== 200) throw new Error(`backup pass: ${res.status} ${res.text}`);
    passes++;
    backedUp += res.json.backed_up.length;
    bytes += res.json.backed_up.reduce((n, t) => n + (t.bytes ?? 0), 0);
    failures.push(...res.json.failed);
    progress(`backups: ${backedUp} done, ${res.json.remaining} left`);
    if (res.json.remaining === 0 || res.json.backed_up.length === 0) break;
  }
  const seconds = (performance.now() - started) / 1000;
  progress(
    `fan-out: ${backedUp} backed up in ${seconds.toFixed(1)} s (${passes} passes, ${(bytes / 1e6).toFixed(1)} MB, ${failures.length} failed)`,
  );
  return { tenants: FLEET, backedUp, failed: failures.length, passes, seconds, bytes };
}

/** Fills tenant `slug`'s database with about `mb` MB of project rows; returns its database id. */
async function fill(slug, mb) {
  const id = (await admin("GET", `/v1/tenants/${slug}`)).json.tenant.database.id;
  const rows = Math.round((mb * 1_000_000) / (ROW_BYTES + 60));
  // In slices, so no single statement runs for long.
  for (let done = 0; done < rows; done += 20_000) {
    const n = Math.min(20_000, rows - done);
    await cloudSql(
      id,
      `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1)
       INSERT INTO projects (name, description) SELECT 'filler ' || x, hex(randomblob(?2)) FROM c`,
      [n, ROW_BYTES / 2],
    );
  }
  const [{ results }] = await cloudSql(id, "SELECT count(*) AS n FROM projects");
  return { id, rows: results[0].n };
}

async function rto(mb) {
  const slug = `rto-${mb}mb`;
  progress(`RTO: ${slug}: create and fill`);
  await create(slug);
  const { rows } = await fill(slug, mb);
  const size = (await stack.api("GET", `/d1/database/${(await admin("GET", `/v1/tenants/${slug}`)).json.tenant.database.id}`)).result
    .file_size;

  progress(`RTO: ${slug}: backup`);
  let started = performance.now();
  const backup = await admin("POST", `/v1/tenants/${slug}/backups`);
  if (backup.status !== 201) throw new Error(`backup ${slug}: ${backup.status} ${backup.text}`);
  const backupSeconds = (performance.now() - started) / 1000;

  progress(`RTO: ${slug}: restore from the backup`);
  const fromBackup = await timedRestore(slug, { backup: backup.json.backup.id });

  progress(`RTO: ${slug}: point in time`);
  await sleep(1_000);
  const at = new Date().toISOString();
  await sleep(1_000);
  const token = await signIn(slug);
  await tenantRequest(slug, "/api/projects", {
    method: "POST",
    headers: { authorization: `Bearer ${token}` },
    body: { name: "after the point" },
  });
  const pointInTime = await timedRestore(slug, { at });

  progress(`RTO: ${slug}: delete, then undelete`);
  started = performance.now();
  await admin("DELETE", `/v1/tenants/${slug}`);
  await until(async () => (await admin("GET", `/v1/tenants/${slug}`)).json.tenant.status === "deleted", `${slug} deleted`);
  const deleteSeconds = (performance.now() - started) / 1000;
  const undelete = await timedRestore(slug, {});
  progress(
    `RTO ${mb} MB: backup ${backupSeconds.toFixed(1)} s, from a backup ${fromBackup.toFixed(1)} s, point in time ${pointInTime.toFixed(1)} s, delete ${deleteSeconds.toFixed(1)} s, undelete ${undelete.toFixed(1)} s`,
  );
  return {
    mb,
    rows,
    fileSize: size,
    backupBytes: backup.json.backup.bytes,
    backupSeconds,
    fromBackup,
    pointInTime,
    deleteSeconds,
    undelete,
  };
}

async function main() {
  await rm(STATE_DIR, { recursive: true, force: true });
  await mkdir(STATE_DIR, { recursive: true });
  progress("starting the stack (Time Travel history on: 200 ms)");
  stack = await startStack({ stateDir: STATE_DIR, log: () => {} });
  admin = adminClient(stack.url, stack.adminToken);
  const results = { date: new Date().toISOString(), fanOut: null, rto: [] };
  try {
    results.fanOut = await fanOut();
    for (const mb of SIZES_MB) {
      try {
        results.rto.push(await rto(mb));
      } catch (e) {
        results.rto.push({ mb, error: String(e instanceof Error ? e.message : e) });
        progress(`RTO ${mb} MB failed: ${e}`);
      }
    }
  } finally {
    await stack.stop();
  }
  await writeFile(path.join(STATE_DIR, "results.json"), JSON.stringify(results, null, 2));
  const f = results.fanOut;
  const lines = [
    "| backups and restores | figure |",
    "| --- | --- |",
    `| backup fan-out, ${fmt(f.tenants)} tenants, ${CONCURRENCY} at a time | ${fmt(f.seconds, 1)} s (${fmt(f.backedUp / f.seconds, 1)} tenants/s; ${f.passes} passes; ${fmt(f.bytes / 1e6, 1)} MB; ${f.failed} failed) |`,
  ];
  for (const r of results.rto) {
    if (r.error) {
      lines.push(`| ${r.mb} MB tenant | failed: ${r.error} |`);
      continue;
    }
    const label = `${r.mb} MB tenant (${fmt(r.rows)} rows, ${fmt(r.fileSize / 1e6, 1)} MB file, ${fmt(r.backupBytes / 1e6, 1)} MB dump)`;
    lines.push(
      `| ${label}: backup (export, stream to R2, read back) | ${fmt(r.backupSeconds, 1)} s |`,
      `| ${label}: RTO, restore from a backup (new database, import, check, 11 s quiesce, switch, verify) | ${fmt(r.fromBackup, 1)} s |`,
      `| ${label}: RTO, point in time (11 s quiesce, Time Travel, migrations) | ${fmt(r.pointInTime, 1)} s |`,
      `| ${label}: delete (backup included) | ${fmt(r.deleteSeconds, 1)} s |`,
      `| ${label}: RTO, undelete (new database, import, check, place, bind, verify) | ${fmt(r.undelete, 1)} s |`,
    );
  }
  console.log(`\n${lines.join("\n")}\n`);
  console.log(`raw figures: ${path.relative(ROOT, path.join(STATE_DIR, "results.json"))}`);
}

await main();
