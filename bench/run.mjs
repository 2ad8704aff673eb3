// `npm run bench`: what tenancy costs, measured side by side on one workerd, and how provisioning
// and migrations scale. Prints a Markdown table (and every raw figure) and writes them, as JSON,
// to .tenantry/bench/results.json. See BENCHMARKS.md for a run and its reading.
//
// The release wasm of tenantry (build/) and of the bare Worker (bench/bare/build/) must be built
// first: `npm run bench` does it (scripts/bench.sh).
//
// Knobs (environment): BENCH_CONNECTIONS (16), BENCH_SECONDS per measured run (5), BENCH_ROUNDS
// (12 pairs of runs), BENCH_WARMUP s per Worker (10), BENCH_CREATES (10), BENCH_DELETES (5), BENCH_FLEET (1000), BENCH_COLD (5).

import { convertV4MiniflareOptions, Miniflare } from "miniflare";
import autocannon from "autocannon";
import { execFile } from "node:child_process";
import { once } from "node:events";
import { mkdir, readdir, readFile, rm, writeFile } from "node:fs/promises";
import net from "node:net";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { gzipSync } from "node:zlib";
import pLimit from "p-limit";
import { adminClient, hostRequest } from "../cloud/client.mjs";
import { rollBackNewestSql, tenantMigrations } from "../cloud/provision.mjs";
import { profileWorker } from "./profile.mjs";
import { namespaceWorkerName } from "../cloud/dispatch.mjs";
import { hotBindingName } from "../scripts/deploy.mjs";
import { compatibilityDate, HOSTS_NAMESPACE, ROOT, startStack, workerBuild } from "../cloud/stack.mjs";

const knob = (name, fallback) => Number(process.env[name] ?? fallback);
const CONNECTIONS = knob("BENCH_CONNECTIONS", 16);
const SECONDS = knob("BENCH_SECONDS", 5);
const ROUNDS = knob("BENCH_ROUNDS", 12);
const CREATES = knob("BENCH_CREATES", 10);
const DELETES = Math.min(knob("BENCH_DELETES", 5), CREATES);
const FLEET = knob("BENCH_FLEET", 1000);
const COLD = knob("BENCH_COLD", 5);
/** Tenant bindings of the binding host whose cold start is timed (wrangler.toml's HOST_CAPACITY). */
const HOST_CAPACITY = knob("BENCH_HOST_CAPACITY", 4000);
/** Projects in the benchmark tenant, and the page the read asks for ("a small page"). */
const PROJECTS = 20;
/** BENCH_HOT=0: read the bench tenant through its binding host (not bound as hot). */
const HOT = process.env.BENCH_HOT !== "0";
let hotBound = false;
const READ_PATH = "/api/projects?limit=10";
const PASSWORD = "a benchmark password";

const STATE_DIR = path.join(ROOT, ".tenantry", "bench");
const TENANTRY_BUILD = path.join(ROOT, "build");
const BARE_BUILD = path.join(ROOT, "bench", "bare", "build");
const BARE = "bare";
const DATE = compatibilityDate();
/**
 * The outside load generator: oha (crates.io), a separate process with its own core, so the
 * bench's Node process is not the one generating the load. scripts/bench.sh installs it.
 */
const OHA = process.env.OHA ?? path.join(ROOT, ".tenantry", "tools", "bin", "oha");
/** BENCH_PROFILE=1: also profile both Workers under load (V8 inspector on a free port). */
const INSPECTOR_PORT = process.env.BENCH_PROFILE ? await freePort() : undefined;

async function freePort() {
  const server = net.createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = /** @type {net.AddressInfo} */ (server.address());
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * Resolves once `check` answers truthy; throws after `ms`.
 * @param {() => Promise<unknown>} check
 * @param {number} ms
 */
async function waitUntil(check, ms) {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`not so after ${ms} ms`);
    await sleep(250);
  }
}
const progress = (msg) => process.stderr.write(`[bench] ${msg}\n`);
const median = (xs) => quantile(xs, 0.5);
function quantile(xs, q) {
  const sorted = [...xs].sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const i = (sorted.length - 1) * q;
  const lo = Math.floor(i);
  return sorted[lo] + (sorted[Math.ceil(i)] - sorted[lo]) * (i - lo);
}

/** The bare Worker's Miniflare options: its wasm, one static D1 binding, its own socket. */
function bareWorker(databaseId, { socket = true } = {}) {
  return {
    name: BARE,
    ...workerBuild(BARE_BUILD),
    compatibilityDate: DATE,
    d1Databases: { DB: databaseId },
    ...(socket ? { unsafeDirectSockets: [{ host: "127.0.0.1", port: 0 }] } : {}),
  };
}

// ---------------------------------------------------------------------------------------------
// The admin API and tenants

let stack;
let bareDatabase = null;
/** Every workerd restart of the run (a binding change restarts workerd; see cloud/runtime.mjs). */
const restarts = [];
function onLog(message) {
  const m = /workerd restarted \((.*)\) in (\d+) ms/.exec(message);
  if (m) restarts.push({ reason: m[1], ms: Number(m[2]) });
  if (process.env.BENCH_VERBOSE) progress(message);
}

let adminApi; // adminClient(...) once the stack is up

/** Polls the tenant (a GET carries its operation forward) until `status`; throws on `failed`. */
async function until(slug, status, pollMs, timeoutMs = 120_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await adminApi("GET", `/v1/tenants/${slug}`);
    const now = res.json?.tenant?.status;
    if (now === status) return res.json.tenant;
    if (now === "failed") throw new Error(`tenant ${slug} failed: ${JSON.stringify(res.json.tenant)}`);
    if (Date.now() > deadline) throw new Error(`tenant ${slug} not ${status} after ${timeoutMs} ms (last: ${JSON.stringify(res.json)})`);
    await sleep(pollMs);
  }
}

/** Creates a tenant through the admin API; resolves with its record and the ms until active. */
async function create(slug, { plan = "free", pollMs = 10 } = {}) {
  const started = performance.now();
  const res = await adminApi("POST", "/v1/tenants", {
    slug,
    name: `Bench ${slug}`,
    plan,
    admin: { email: `admin@${slug}.test`, password: PASSWORD },
  });
  if (![201, 202].includes(res.status)) throw new Error(`create ${slug}: ${res.status} ${JSON.stringify(res.json)}`);
  const answered = performance.now() - started;
  const tenant = await until(slug, "active", pollMs);
  return { tenant, ms: performance.now() - started, answered };
}

async function destroy(slug) {
  const started = performance.now();
  const res = await adminApi("DELETE", `/v1/tenants/${slug}`);
  if (![200, 202].includes(res.status)) throw new Error(`delete ${slug}: ${res.status} ${JSON.stringify(res.json)}`);
  await until(slug, "deleted", 10);
  return performance.now() - started;
}

const tenantRequest = (slug, pathname, opts) => hostRequest(Number(new URL(stack.url).port), `${slug}.localhost`, pathname, opts);

async function login(slug) {
  const res = await tenantRequest(slug, "/api/auth/login", { method: "POST", body: { email: `admin@${slug}.test`, password: PASSWORD } });
  if (res.status !== 200) throw new Error(`login on ${slug}: ${res.status} ${res.text}`);
  return res.json.token;
}

// ---------------------------------------------------------------------------------------------
// Load

/**
 * CPU time (user + system, ms) of this process's workerd children so far (Linux; `undefined`
 * elsewhere). One workerd runs both Workers, the binding hosts and D1, and the runs come one after
 * another, so a run's share of it is its requests' whole server-side cost, main Worker, host and
 * D1 together. Unlike throughput it does not count time the cores spent on other processes (on a
 * shared machine, contention still inflates it somewhat).
 */
async function workerdCpuMs() {
  try {
    let ticks = 0;
    for (const pid of await readdir("/proc")) {
      if (!/^\d+$/.test(pid)) continue;
      const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
      const close = stat.lastIndexOf(")");
      if (!stat.slice(0, close).endsWith("(workerd")) continue;
      const fields = stat.slice(close + 2).split(" "); // from field 3 (state) on
      if (Number(fields[1]) !== process.pid) continue; // ppid
      ticks += Number(fields[11]) + Number(fields[12]); // utime, stime
    }
    return ticks * 10; // USER_HZ is 100 on Linux
  } catch {
    return undefined;
  }
}

/**
 * One run of the load generator against `url` (a Worker's own socket on workerd) as `host`.
 * Latencies are every response's own time in ms (autocannon's histogram rounds to whole ms).
 */
async function loadRun({ url, host, headers = {}, expectBody, seconds }) {
  const cpuBefore = await workerdCpuMs();
  const latencies = [];
  let controlQueries = 0;
  let responses = 0;
  let mismatches = 0;
  let reported = 0; // responses that carried the control-plane query count
  let refreshes = 0; // background refreshes of the tenant's row these requests started
  const statuses = {};
  const instance = autocannon({
    url,
    connections: CONNECTIONS,
    duration: seconds,
    headers: { host, ...headers },
    requests: [
      {
        method: "GET",
        path: READ_PATH,
        onResponse: (status, body, _ctx, h) => {
          responses++;
          if (status !== 200 || body !== expectBody) mismatches++;
          const header = (name) => Object.entries(h).find(([k]) => k.toLowerCase() === name)?.[1];
          const queries = header("x-tenantry-control-queries");
          if (queries !== undefined) {
            reported++;
            controlQueries += Number(queries);
          }
          if (header("x-tenantry-control-refresh") === "1") refreshes++;
        },
      },
    ],
  });
  instance.on("response", (_client, status, _bytes, ms) => {
    statuses[status] = (statuses[status] ?? 0) + 1;
    latencies.push(ms);
  });
  const result = await new Promise((resolve, reject) => instance.on("done", resolve).on("error", reject));
  const cpuAfter = await workerdCpuMs();
  const ok = statuses[200] ?? 0;
  return {
    cpuUsPerRequest: cpuBefore === undefined || cpuAfter === undefined ? undefined : ((cpuAfter - cpuBefore) * 1000) / latencies.length,
    requests: latencies.length,
    ok,
    statuses,
    errors: result.errors,
    timeouts: result.timeouts,
    mismatches,
    rps: ok / (result.duration ?? seconds),
    p50: quantile(latencies, 0.5),
    p99: quantile(latencies, 0.99),
    controlQueries,
    responses,
    reported,
    refreshes,
  };
}

/**
 * One run of oha against `url` as `host`: the same read, connections and length as `loadRun`.
 * oha does not check bodies; every answer must still be a 200. `-w`: the requests in flight when
 * the time is up are waited for (else oha counts them as errors, "aborted due to deadline").
 */
async function ohaRun({ url, host, headers = {}, seconds }) {
  const cpuBefore = await workerdCpuMs();
  const target = new URL(READ_PATH, url).href;
  const head = Object.entries({ host, ...headers }).flatMap(([k, v]) => ["-H", `${k}: ${v}`]);
  const args = ["-z", `${seconds}s`, "-w", "-c", String(CONNECTIONS), "--no-tui", "--output-format", "json", ...head, target];
  const { stdout } = await promisify(execFile)(OHA, args, { maxBuffer: 256 * 1024 * 1024 });
  const cpuAfter = await workerdCpuMs();
  const out = JSON.parse(stdout);
  const statuses = out.statusCodeDistribution ?? {};
  const requests = Object.values(statuses).reduce((n, c) => n + Number(c), 0);
  const ok = Number(statuses["200"] ?? 0);
  const errors = Object.values(out.errorDistribution ?? {}).reduce((n, c) => n + Number(c), 0);
  const elapsed = out.summary?.total ?? seconds;
  return {
    generator: "oha",
    cpuUsPerRequest: cpuBefore === undefined || cpuAfter === undefined ? undefined : ((cpuAfter - cpuBefore) * 1000) / requests,
    requests,
    ok,
    statuses,
    errors,
    timeouts: 0,
    mismatches: 0,
    rps: ok / elapsed,
    p50: out.latencyPercentiles.p50 * 1000,
    p99: out.latencyPercentiles.p99 * 1000,
  };
}

/** Is oha there (scripts/bench.sh installs it)? */
async function haveOha() {
  try {
    await promisify(execFile)(OHA, ["--version"]);
    return true;
  } catch {
    progress(`oha is not at ${OHA}: the outside generator's rounds are skipped (scripts/bench.sh installs it)`);
    return false;
  }
}

async function benchmarkRead() {
  progress("hot read: creating the benchmark tenant");
  const { tenant } = await create("bench", { plan: "enterprise" });
  const token = await login("bench");
  for (let i = 1; i <= PROJECTS; i++) {
    const res = await tenantRequest("bench", "/api/projects", {
      method: "POST",
      headers: { authorization: `Bearer ${token}` },
      body: { name: `Project ${i}`, description: `The benchmark's project number ${i}.` },
    });
    if (res.status !== 201) throw new Error(`seeding a project: ${res.status} ${res.text}`);
  }
  // The bench tenant is now the busiest on its host: once its usage is flushed (10 s after its
  // first metered request), `npm run deploy`'s code binds it on the main Worker as hot (the path
  // a busy tenant takes in production). BENCH_HOT=0 leaves it behind its host (every read hops).
  if (HOT && !process.env.BENCH_SINGLE_SCRIPT) {
    progress("hot read: waiting for the usage flush, then deploying (binds the hot tenant)");
    await waitUntil(async () => {
      const usage = await adminApi("GET", "/v1/tenants/bench/usage");
      return usage.status === 200 && usage.json.current_month.api_calls.used >= PROJECTS;
    }, 30_000);
    await stack.deployBuild({ force: true, message: "bench: bind the hot tenants" });
    const settings = stack.cloud.workers.deployedVersion("tenantry");
    hotBound = JSON.stringify(settings ?? {}).includes(hotBindingName(tenant.database.id));
    if (!hotBound) throw new Error("the deploy did not bind the bench tenant as hot");
  }
  // The bare Worker joins the same workerd, bound to the benchmark tenant's own database.
  bareDatabase = tenant.database.id;
  await stack.runtime.restart("benchmark: add the bare Worker");
  const tenantryUrl = String(await stack.runtime.directUrl("tenantry"));
  const bareUrl = String(await stack.runtime.directUrl(BARE));

  // Both answer the same bytes: the comparison is of equal work.
  const auth = { authorization: `Bearer ${token}` };
  const a = await hostRequest(Number(new URL(tenantryUrl).port), "bench.localhost", READ_PATH, { headers: auth });
  const b = await hostRequest(Number(new URL(bareUrl).port), "bare.localhost", READ_PATH);
  if (a.status !== 200 || b.status !== 200) throw new Error(`read: tenantry ${a.status} ${a.text} / bare ${b.status} ${b.text}`);
  if (a.text !== b.text) throw new Error(`the two Workers answer differently:\n${a.text}\n${b.text}`);
  if (a.json.projects.length !== 10) throw new Error(`expected a page of 10 projects, got ${a.json.projects.length}`);

  const WARMUP_SECONDS = knob("BENCH_WARMUP", 10);
  const sides = {
    tenantry: { url: tenantryUrl, host: "bench.localhost", headers: auth, expectBody: a.text },
    bare: { url: bareUrl, host: "bare.localhost", expectBody: b.text },
  };
  progress(`hot read: warming up, ${WARMUP_SECONDS} s each (${CONNECTIONS} connections)`);
  // Warm-up: V8 compiles wasm with its baseline compiler first and tiers hot functions up to
  // the optimizing one as they run; tenantry's module is 3.5 times the bare one's.
  for (const side of Object.values(sides)) await loadRun({ ...side, seconds: WARMUP_SECONDS });
  const runs = { tenantry: [], bare: [] };
  const ohaRuns = { tenantry: [], bare: [] };
  const oha = await haveOha();
  for (let round = 0; round < ROUNDS; round++) {
    // ABBA order, so neither side always runs on a warmer (or more tired) machine; each round
    // has a pair from each generator, autocannon's first on even rounds and oha's on odd ones.
    const order = round % 2 === 0 ? ["bare", "tenantry"] : ["tenantry", "bare"];
    const generators = oha ? (round % 2 === 0 ? ["autocannon", "oha"] : ["oha", "autocannon"]) : ["autocannon"];
    for (const generator of generators) {
      for (const name of order) {
        // Each measured run starts hot: a second of unmeasured load first (the other side's run
        // was longer than the lookup TTL, so the tenant's row has expired meanwhile).
        await loadRun({ ...sides[name], seconds: 1 });
        if (generator === "oha") {
          const run = await ohaRun({ ...sides[name], seconds: SECONDS });
          progress(
            `hot read: round ${round + 1} oha ${name}: ${run.rps.toFixed(0)} req/s, p50 ${run.p50.toFixed(2)} ms, p99 ${run.p99.toFixed(2)} ms, workerd CPU ${run.cpuUsPerRequest?.toFixed(0)} µs/request, statuses ${JSON.stringify(run.statuses)}`,
          );
          ohaRuns[name].push(run);
          continue;
        }
        const run = await loadRun({ ...sides[name], seconds: SECONDS });
        progress(
          `hot read: round ${round + 1} ${name}: ${run.rps.toFixed(0)} req/s, p50 ${run.p50.toFixed(2)} ms, p99 ${run.p99.toFixed(2)} ms, workerd CPU ${run.cpuUsPerRequest?.toFixed(0)} µs/request, control-plane queries ${run.controlQueries} on the path, ${run.refreshes} in the background (reported by ${run.reported} of ${run.responses})`,
        );
        runs[name].push(run);
      }
    }
  }
  let profiles;
  if (INSPECTOR_PORT) {
    // Where the time goes, per isolate: one more run of each side under the sampling profiler.
    profiles = {};
    // The tenant's binding host too (its own isolate), while tenantry is under load.
    const hostName = (await adminApi("GET", "/v1/tenants/bench")).json.tenant.host;
    const host = hostName ? [["tenantry's binding host", namespaceWorkerName(HOSTS_NAMESPACE, hostName), "tenantry"]] : [];
    for (const [name, worker, side = name] of [["tenantry", "tenantry"], ["bare", BARE], ...host]) {
      progress(`profiling ${name}`);
      const { result, summary } = await profileWorker(INSPECTOR_PORT, worker, () => loadRun({ ...sides[side], seconds: SECONDS }), {
        top: knob("BENCH_PROFILE_TOP", 25),
      });
      profiles[name] = { ...summary, requests: result.ok, busyUsPerRequest: (summary.busyMs * 1000) / result.ok };
    }
  }
  return { runs, ohaRuns, binding: tenant.binding, profiles };
}

// ---------------------------------------------------------------------------------------------
// Provisioning and migrations

async function benchmarkLifecycle() {
  const slugs = Array.from({ length: CREATES }, (_, i) => `bench-life-${i}`);
  const creates = [];
  const answers = [];
  const restartsBefore = restarts.length;
  for (const slug of slugs) {
    const { ms, answered } = await create(slug);
    creates.push(ms);
    answers.push(answered);
    progress(`create ${slug}: ${ms.toFixed(0)} ms (POST answered after ${answered.toFixed(0)} ms)`);
  }
  const createRestarts = restarts
    .slice(restartsBefore)
    .filter((r) => r.reason.startsWith("settings edit of"))
    .map((r) => r.ms);
  const deletes = [];
  for (const slug of slugs.slice(0, DELETES)) {
    deletes.push(await destroy(slug));
    progress(`delete ${slug}: ${deletes.at(-1).toFixed(0)} ms`);
  }
  return { creates, answers, createRestarts, deletes };
}

async function buildFleet() {
  const slugs = Array.from({ length: FLEET }, (_, i) => `fleet-${String(i).padStart(4, "0")}`);
  const started = performance.now();
  let done = 0;
  const tenants = await pLimit(16).map(slugs, async (slug) => {
    const { tenant } = await create(slug, { pollMs: 100 });
    if (++done % 100 === 0) progress(`fleet: ${done}/${FLEET} tenants active`);
    return tenant;
  });
  return { tenants, seconds: (performance.now() - started) / 1000 };
}

async function cloudSql(databaseId, sql, params) {
  const res = await stack.api("POST", `/d1/database/${databaseId}/query`, params ? { sql, params } : { sql });
  return res.result;
}

/** Puts `tenants` one migration back, runs a fan-out to completion, checks every one is current. */
async function fanOut(tenants, controlId) {
  const latest = tenantMigrations().length;
  const undo = rollBackNewestSql();
  await pLimit(8).map(tenants, (t) => cloudSql(t.database.id, undo));
  const slugs = JSON.stringify(tenants.map((t) => t.slug));
  await cloudSql(controlId, "UPDATE tenants SET schema_version = ?1 WHERE slug IN (SELECT value FROM json_each(?2))", [latest - 1, slugs]);
  const status = await adminApi("GET", "/v1/migrations/status");
  if (status.json.behind !== tenants.length)
    throw new Error(`expected ${tenants.length} tenants behind, status says ${status.json.behind}`);

  // What `npm run migrate` does: passes of up to 50 tenants until the cursor runs out.
  const started = performance.now();
  let after = null;
  let migrated = 0;
  let passes = 0;
  do {
    const res = await adminApi("POST", "/v1/migrations/apply", { after, limit: 50 });
    if (res.status !== 200) throw new Error(`fan-out pass: ${res.status} ${JSON.stringify(res.json)}`);
    if (res.json.failed.length) throw new Error(`fan-out failures: ${JSON.stringify(res.json.failed.slice(0, 3))}`);
    migrated += res.json.migrated.length;
    passes++;
    after = res.json.next;
  } while (after);
  const seconds = (performance.now() - started) / 1000;

  const after_ = await adminApi("GET", "/v1/migrations/status");
  if (after_.json.behind !== 0 || migrated !== tenants.length) {
    throw new Error(`fan-out left ${after_.json.behind} behind (migrated ${migrated} of ${tenants.length})`);
  }
  // And the databases themselves say so (a sample: every tenth).
  for (const t of tenants.filter((_, i) => i % 10 === 0)) {
    const rows = (await cloudSql(t.database.id, "SELECT count(*) AS n FROM d1_migrations"))[0].results;
    if (rows[0].n !== latest) throw new Error(`${t.slug} has ${rows[0].n} migrations, not ${latest}`);
  }
  return { tenants: tenants.length, passes, seconds };
}

// ---------------------------------------------------------------------------------------------
// Cold start and size

/**
 * Starts a workerd holding only `worker`, times it to ready and to its first answer, and stops it.
 * The stack must be stopped (one workerd at a time on the persisted databases).
 */
async function coldStart(worker, host, headers, { others = [], path: urlPath = READ_PATH, init = {} } = {}) {
  const started = performance.now();
  const mf = new Miniflare(
    convertV4MiniflareOptions(
      /** @type {any} */ ({ resourcePersistencePath: path.join(STATE_DIR, "persist"), workers: [worker, ...others] }),
    ),
  );
  try {
    await mf.ready;
    const ready = performance.now();
    const res = await mf.dispatchFetch(`http://${host}${urlPath}`, { headers, ...init });
    await res.arrayBuffer();
    const answered = performance.now();
    if (res.status !== 200) throw new Error(`cold start of ${worker.name}: first answer ${res.status}`);
    return { ready: ready - started, first: answered - ready, total: answered - started };
  } finally {
    await mf.dispose();
  }
}

/** The table's rows for the outside generator's rounds (none when oha was not there). */
function ohaRows({ tenantry: t, bare: b }) {
  if (!t.length) return [];
  const pairs = (key) => t.map((run, i) => run[key] / b[i][key]);
  const ratio = (key) => median(pairs(key));
  const spread = (key) => `${fmt(Math.min(...pairs(key)), 2)}–${fmt(Math.max(...pairs(key)), 2)}`;
  const agg = (runs, key) => median(runs.map((r) => r[key]));
  return [
    `| hot read throughput with oha (its own process), req/s (median of ${t.length} runs) | ${fmt(agg(t, "rps"))} | ${fmt(agg(b, "rps"))} | ${fmt(ratio("rps"), 2)}× (rounds: ${spread("rps")}) | ≥ 0.90× | ${met(ratio("rps") >= 0.9)} |`,
    `| hot read latency p50 with oha, ms | ${fmt(agg(t, "p50"), 2)} | ${fmt(agg(b, "p50"), 2)} | ${fmt(ratio("p50"), 2)}× (rounds: ${spread("p50")}) | | |`,
    `| hot read latency p99 with oha, ms | ${fmt(agg(t, "p99"), 2)} | ${fmt(agg(b, "p99"), 2)} | ${fmt(ratio("p99"), 2)}× (rounds: ${spread("p99")}) | ≤ 1.15× | ${met(ratio("p99") <= 1.15)} |`,
  ];
}

async function sizes(dir) {
  const wasm = await readFile(path.join(dir, "index_bg.wasm"));
  const js = await readFile(path.join(dir, "index.js"));
  const opt = JSON.parse(await readFile(path.join(dir, "wasm-opt.json"), "utf8"));
  return { wasm: wasm.length, wasmGzip: gzipSync(wasm, { level: 9 }).length, js: js.length, beforeWasmOpt: opt.before_wasm_opt };
}

// ---------------------------------------------------------------------------------------------

const fmt = (n, digits = 0) =>
  Number.isFinite(n) ? n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }) : "n/a";
const kib = (bytes) => `${fmt(bytes)} B (${fmt(bytes / 1024, 1)} KiB)`;
const met = (ok) => (ok ? "yes" : "**no**");

/** Which way tenantry's hot read reached the tenant's database in this run. */
const readPath = () =>
  process.env.BENCH_SINGLE_SCRIPT
    ? "the main Worker's own TENANT_ binding (single-script layout, no binding host)"
    : hotBound
      ? "the main Worker's HOT_ binding, bound by `npm run deploy` (the tenant lives on a binding host)"
      : "the tenant's binding host (BENCH_HOT=0: one hop a request)";

function printRuns({ runs, ohaRuns, profiles }) {
  console.log(`\nthe hot read goes through ${readPath()}`);
  for (const [generator, set] of [
    ["autocannon, in the bench's process", runs],
    ["oha, its own process", ohaRuns],
  ]) {
    if (!set.tenantry.length) continue;
    console.log(`\n${generator}: per run (req/s, p50 ms, p99 ms, workerd CPU µs per request):`);
    for (const [name, list] of Object.entries(set)) {
      console.log(
        `  ${name.padEnd(9)} ${list.map((r) => `${fmt(r.rps)} / ${fmt(r.p50, 2)} / ${fmt(r.p99, 2)} / ${fmt(r.cpuUsPerRequest ?? NaN)}`).join("   ")}`,
      );
    }
    const pairs = (/** @type {(r: any) => number} */ f) => set.tenantry.map((r, i) => f(r) / f(set.bare[i]));
    const ratio = (/** @type {(r: any) => number} */ f) =>
      `${median(pairs(f)).toFixed(2)} (${Math.min(...pairs(f)).toFixed(2)}–${Math.max(...pairs(f)).toFixed(2)})`;
    console.log(
      `tenantry / bare, median of the rounds (spread): throughput ${ratio((r) => r.rps)}, p50 ${ratio((r) => r.p50)}, p99 ${ratio((r) => r.p99)}, workerd CPU per request ${ratio((r) => r.cpuUsPerRequest)}`,
    );
  }
  for (const [name, p] of Object.entries(profiles ?? {})) {
    console.log(`\nprofile of ${name}'s isolate: ${fmt(p.busyUsPerRequest)} µs busy per request (${fmt(p.requests)} requests)`);
    console.log(
      `  by kind: ${Object.entries(p.kinds)
        .map(([k, ms]) => `${k} ${fmt((ms * 1000) / p.requests)} µs`)
        .join(", ")} (per request)`,
    );
    for (const f of p.top)
      console.log(`  ${fmt(f.share * 100, 1).padStart(5)}%  ${fmt((f.ms * 1000) / p.requests, 1).padStart(6)} µs  ${f.name}`);
  }
}

async function main() {
  const startedAt = new Date();
  await rm(STATE_DIR, { recursive: true, force: true });
  await mkdir(STATE_DIR, { recursive: true });
  const size = { tenantry: await sizes(TENANTRY_BUILD), bare: await sizes(BARE_BUILD) };

  progress("starting the stack");
  stack = await startStack({
    stateDir: STATE_DIR,
    directSocket: true,
    inspectorPort: INSPECTOR_PORT,
    extraWorkers: () => (bareDatabase ? [bareWorker(bareDatabase)] : []),
    // No Time Travel history: its poller would dump every tenant database the load writes to.
    timeTravelIntervalMs: 0,
    // BENCH_SINGLE_SCRIPT=1: the single-script layout (every tenant bound on the main Worker, no
    // binding host), to see what the hot read costs without the hop.
    ...(process.env.BENCH_SINGLE_SCRIPT ? { hostsNamespace: "" } : {}),
    log: onLog,
  });
  adminApi = adminClient(stack.url, stack.adminToken);
  let read, lifecycle, fleet, fan100, fanAll, controlId, token, deployed, benchHost;
  try {
    read = await benchmarkRead();
    if (process.env.BENCH_READ_ONLY) return printRuns(read); // a quick look while profiling
    token = await login("bench");
    lifecycle = await benchmarkLifecycle();
    progress(`fleet: creating ${FLEET} tenants, 16 at a time`);
    fleet = await buildFleet();
    controlId = stack.controlDatabase.uuid;
    // 100 tenants take well under a second, so that figure is the median of three slices.
    const slices = [0, 1, 2].map((i) => fleet.tenants.slice((i * 100) % FLEET, ((i * 100) % FLEET) + Math.min(100, FLEET)));
    const small = [];
    for (const slice of slices) {
      progress(`fan-out: ${slice.length} tenants`);
      small.push(await fanOut(slice, controlId));
    }
    const times = small.map((f) => f.seconds);
    fan100 = { ...small[0], seconds: median(times), min: Math.min(...times), max: Math.max(...times) };
    progress(`fan-out: ${FLEET} tenants`);
    fanAll = await fanOut(fleet.tenants, controlId);
    // Every deployed script's Miniflare options (the main Worker and its binding hosts).
    deployed = await stack.cloud.workers.miniflareWorkers("tenantry");
    benchHost = (await adminApi("GET", "/v1/tenants/bench")).json.tenant.host;
  } finally {
    await stack.stop();
  }

  progress("cold starts");
  // The main Worker with the one binding host the bench tenant is on, as they deploy.
  // eslint-disable-next-line no-unused-vars
  const { unsafeDirectSockets, ...main } = deployed.find((w) => w.name === "tenantry");
  const hosts = deployed.filter((w) => w.name.startsWith("dispatch:"));
  const hostWorker = hosts.find((w) => w.name.endsWith(`:${benchHost}`));
  // A binding host at its full cap: HOST_CAPACITY tenant bindings (names bound to the fleet's
  // databases in turn), the bench tenant's among them.
  const fleetIds = Object.values(hostWorker.d1Databases);
  const full = {
    ...hostWorker,
    name: "full-host",
    d1Databases: Object.fromEntries([
      ...Array.from({ length: HOST_CAPACITY - 1 }, (_, i) => [`TENANT_COLD_${i}`, fleetIds[i % fleetIds.length]]),
      [read.binding, hostWorker.d1Databases[read.binding]],
    ]),
  };
  const sqlProbe = {
    method: "POST",
    body: JSON.stringify({ binding: read.binding, statements: [{ sql: "SELECT count(*) AS n FROM projects" }] }),
  };
  const variants = {
    bare: () => coldStart(bareWorker(bareDatabase, { socket: false }), "bare.localhost", {}),
    tenantry: () => coldStart(main, "bench.localhost", { authorization: `Bearer ${token}` }, { others: hosts }),
    fullHost: () => coldStart(full, "host", {}, { path: "/sql", init: sqlProbe }),
  };
  const cold = { bare: [], tenantry: [], fullHost: [] };
  for (let i = 0; i < COLD; i++) for (const [name, run] of Object.entries(variants)) cold[name].push(await run());
  const tenantBindings = Object.keys(full.d1Databases).length;

  // ------------------------------------------------------------------ the table
  const agg = (runs, key) => median(runs.map((r) => r[key]));
  const t = read.runs.tenantry;
  const b = read.runs.bare;
  const rps = [agg(t, "rps"), agg(b, "rps")];
  const p50 = [agg(t, "p50"), agg(b, "p50")];
  const p99 = [agg(t, "p99"), agg(b, "p99")];
  // The ratio is taken within each round (the two runs back to back), then the median over the
  // rounds: this machine's speed drifts between rounds more than the two Workers differ.
  const pairRatios = (key) => t.map((run, i) => run[key] / b[i][key]);
  const ratio = (key) => median(pairRatios(key));
  const spread = (key) => `${fmt(Math.min(...pairRatios(key)), 2)}–${fmt(Math.max(...pairRatios(key)), 2)}`;
  const hot = t.reduce((n, r) => n + r.responses, 0);
  // Every tenantry response says how many control-plane queries it made; a count read off fewer
  // responses than were made would not be a count.
  if (t.some((r) => r.reported !== r.responses)) throw new Error("tenantry responses without X-Tenantry-Control-Queries");
  const cpq = t.reduce((n, r) => n + r.controlQueries, 0);
  const refreshes = t.reduce((n, r) => n + r.refreshes, 0);
  const measuredSeconds = ROUNDS * SECONDS;
  const bad = [...t, ...b, ...read.ohaRuns.tenantry, ...read.ohaRuns.bare].reduce(
    (n, r) => n + (r.requests - r.ok) + r.errors + r.timeouts + r.mismatches,
    0,
  );
  const coldOf = (name, key) => median(cold[name].map((c) => c[key]));
  const createMedian = median(lifecycle.creates);
  const fanRatio = fanAll.seconds / fan100.seconds;
  const scale = fanAll.tenants / fan100.tenants;

  const rows = [
    ["| measure | tenantry | bare Worker | tenantry / bare | goal | met |", "| --- | --- | --- | --- | --- | --- |"],
    [`| the path of tenantry's hot read | ${readPath()} | its own binding | | | |`],
    [
      `| hot read throughput with autocannon (in the bench's process), req/s (median of ${ROUNDS} runs of ${SECONDS} s each) | ${fmt(rps[0])} | ${fmt(rps[1])} | ${fmt(ratio("rps"), 2)}× (rounds: ${spread("rps")}) | ≥ 0.90× | ${met(ratio("rps") >= 0.9)} |`,
    ],
    [
      `| hot read latency p50 with autocannon, ms | ${fmt(p50[0], 2)} | ${fmt(p50[1], 2)} | ${fmt(ratio("p50"), 2)}× (rounds: ${spread("p50")}) | | |`,
    ],
    [
      `| hot read latency p99 with autocannon, ms | ${fmt(p99[0], 2)} | ${fmt(p99[1], 2)} | ${fmt(ratio("p99"), 2)}× (rounds: ${spread("p99")}) | ≤ 1.15× | ${met(ratio("p99") <= 1.15)} |`,
    ],
    ...ohaRows(read.ohaRuns),
    [`| control-plane queries on a hot request's path | ${cpq} in ${fmt(hot)} requests | – | | 0 | ${met(cpq === 0)} |`],
    [
      `| background refreshes of the tenant's row (refresh-ahead) | ${refreshes} in ${measuredSeconds} s (${fmt(refreshes / measuredSeconds, 2)}/s, whatever the request rate) | – | | | |`,
    ],
    [`| responses other than 200 with the expected body | ${bad} | | | 0 | ${met(bad === 0)} |`],
    [`| wasm, raw | ${kib(size.tenantry.wasm)} | ${kib(size.bare.wasm)} | ${fmt(size.tenantry.wasm / size.bare.wasm, 2)}× | | |`],
    [
      `| wasm, gzip (zlib level 9) | ${kib(size.tenantry.wasmGzip)} | ${kib(size.bare.wasmGzip)} | ${fmt(size.tenantry.wasmGzip / size.bare.wasmGzip, 2)}× | ≤ 500 KiB | ${met(size.tenantry.wasmGzip <= 500 * 1024)} |`,
    ],
    [
      `| wasm, raw, before wasm-opt -Oz (binaryen 132, part of the build) | ${kib(size.tenantry.beforeWasmOpt)} | ${kib(size.bare.beforeWasmOpt)} | | | |`,
    ],
    [
      `| cold start: new workerd to ready, ms (median of ${COLD}) | ${fmt(coldOf("tenantry", "ready"))} | ${fmt(coldOf("bare", "ready"))} | ${fmt(coldOf("tenantry", "ready") / coldOf("bare", "ready"), 2)}× | | |`,
    ],
    [
      `| cold start: ready to first response, ms | ${fmt(coldOf("tenantry", "first"))} | ${fmt(coldOf("bare", "first"))} | ${fmt(coldOf("tenantry", "first") / coldOf("bare", "first"), 2)}× | | |`,
    ],
    [
      `| cold start, total, ms | ${fmt(coldOf("tenantry", "total"))} | ${fmt(coldOf("bare", "total"))} | ${fmt(coldOf("tenantry", "total") / coldOf("bare", "total"), 2)}× | | |`,
    ],
    [
      `| cold start of a binding host holding its full cap (${fmt(tenantBindings)} tenant bindings): new workerd to its first answer, ms | ${fmt(coldOf("fullHost", "total"))} (ready ${fmt(coldOf("fullHost", "ready"))}) | | | | |`,
    ],
    [
      `| tenant create to active, ms (median of ${CREATES}; min–max) | ${fmt(createMedian)} (${fmt(Math.min(...lifecycle.creates))}–${fmt(Math.max(...lifecycle.creates))}) | | | ≤ 1,000 | ${met(createMedian <= 1000)} |`,
    ],
    [`| of which: until the POST answers (saga through the binding change), ms | ${fmt(median(lifecycle.answers))} | | | | |`],
    [
      `| of which: workerd restart for the new binding (drained), ms | ${fmt(median(lifecycle.createRestarts))} (${lifecycle.createRestarts.length} restarts) | | | | |`,
    ],
    [
      `| tenant delete to deleted (backup included), ms (median of ${DELETES}) | ${fmt(median(lifecycle.deletes))} (${fmt(Math.min(...lifecycle.deletes))}–${fmt(Math.max(...lifecycle.deletes))}) | | | | |`,
    ],
    [`| ${fmt(FLEET)} creates, 16 at a time | ${fmt(fleet.seconds, 1)} s (${fmt(FLEET / fleet.seconds, 1)} tenants/s) | | | | |`],
    [
      `| migration fan-out, ${fan100.tenants} tenants (median of 3 slices; min–max) | ${fmt(fan100.seconds, 2)} s (${fmt(fan100.min, 2)}–${fmt(fan100.max, 2)}; ${fan100.passes} passes) | | | | |`,
    ],
    [
      `| migration fan-out, ${fmt(fanAll.tenants)} tenants | ${fmt(fanAll.seconds, 2)} s (${fanAll.passes} passes) | | ${fmt(fanRatio, 1)}× the ${fan100.tenants} (${fmt(scale)}× the tenants) | ≤ 60 s, ≈ linear | ${met(fanAll.seconds <= 60 && fanRatio <= scale * 1.5)} |`,
    ],
  ].flat();

  const results = {
    date: startedAt.toISOString(),
    machine: { cpus: (await import("node:os")).cpus().length, node: process.version },
    settings: { CONNECTIONS, SECONDS, ROUNDS, CREATES, DELETES, FLEET, COLD, READ_PATH, PROJECTS },
    size,
    read: read.runs,
    readOha: read.ohaRuns,
    lifecycle,
    fleet: { seconds: fleet.seconds },
    fanOut: [fan100, fanAll],
    cold,
    tenantBindings,
  };
  await writeFile(path.join(STATE_DIR, "results.json"), JSON.stringify(results, null, 2));
  console.log(`\ntenantry benchmark, ${startedAt.toISOString().slice(0, 10)}, ${results.machine.cpus} cores, ${CONNECTIONS} connections\n`);
  console.log(rows.join("\n"));
  printRuns(read);
  console.log(`\nraw figures: ${path.relative(ROOT, path.join(STATE_DIR, "results.json"))}`);
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
