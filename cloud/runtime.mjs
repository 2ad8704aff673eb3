// The workerd runtime behind the local cloud: one Miniflare running the tenantry Worker (the
// entry) and a small helper Worker through which the local cloud reads and writes D1 databases.
//
// Two facts of Miniflare shape this file:
// - A D1 database is reachable only through a binding, and bindings change only by restarting
//   workerd (`setOptions`).
// - A restart kills requests in flight.
// So restarts are *drained*: new requests wait at a gate, requests in flight finish (up to
// DRAIN_TIMEOUT_MS), then workerd restarts once for every change queued meanwhile. And the helper
// is bound ahead of time to a pool of spare database ids ("slots"): creating a database takes a
// slot, so it never waits for a restart (it may be called from inside a Worker request that the
// restart would have to drain first). The pool is refilled by an ordinary drained restart.

import { Miniflare, convertV4MiniflareOptions } from "miniflare";
import { randomUUID } from "node:crypto";

// Cloudflare lets requests in flight finish for up to 30 s when a new Worker version deploys.
const DRAIN_TIMEOUT_MS = 30_000;

const HELPER_SCRIPT = `
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const db = env[url.searchParams.get("slot")];
    if (!db) return Response.json({ ok: false, error: "no such slot" }, { status: 404 });
    const { mode, statements } = await request.json();
    try {
      if (mode === "export") {
        const rows = await db.prepare("PRAGMA miniflare_d1_export(?,?,?);").bind(0, 0).raw();
        return Response.json({ ok: true, sql: rows[0].join("\\n") });
      }
      if (mode === "raw") {
        const out = [];
        for (const s of statements) {
          const [columns, ...rows] = await db.prepare(s.sql).bind(...(s.params ?? [])).raw({ columnNames: true });
          out.push({ columns: columns ?? [], rows });
        }
        return Response.json({ ok: true, results: out });
      }
      const results = await db.batch(statements.map((s) => db.prepare(s.sql).bind(...(s.params ?? []))));
      return Response.json({ ok: true, results: results.map((r) => ({ results: r.results, meta: r.meta })) });
    } catch (e) {
      return Response.json({ ok: false, error: String(e.message ?? e).replace(/^D1_ERROR: /, "") });
    }
  },
};`;

/**
 * A gate in front of workerd with two closed phases:
 * - draining: new requests wait; requests in flight finish. Calls that requests in flight are
 *   waiting on (the local cloud's D1 calls) still pass, or the drain would wait on itself.
 * - restarting: everything waits.
 */
class Gate {
  #inflight = 0;
  #draining = null; // a promise while draining or restarting
  #restarting = null; // a promise while restarting
  /** @type {(value?: unknown) => void} */
  #open = () => {};
  /** @type {(value?: unknown) => void} */
  #resume = () => {};
  #idle = [];

  /** @param {boolean} [passDrain] pass while draining (only for calls in-flight requests wait on) */
  async enter(passDrain = false) {
    for (;;) {
      const wait = passDrain ? this.#restarting : this.#draining;
      if (!wait) break;
      await wait;
    }
    this.#inflight++;
  }

  leave() {
    this.#inflight--;
    if (this.#inflight === 0) for (const resolve of this.#idle.splice(0)) resolve();
  }

  /** Starts draining; resolves `true` once nothing is in flight, `false` after `timeoutMs`. */
  async drain(timeoutMs) {
    this.#draining = new Promise((resolve) => (this.#open = resolve));
    if (this.#inflight === 0) return true;
    let timer;
    const drained = await Promise.race([
      new Promise((resolve) => this.#idle.push(() => resolve(true))),
      new Promise((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs))),
    ]);
    clearTimeout(timer);
    return drained;
  }

  /** Closes the gate to everything while workerd restarts. */
  closeForRestart() {
    this.#restarting = new Promise((resolve) => (this.#resume = resolve));
  }

  open() {
    const [open, resume] = [this.#open, this.#resume];
    this.#draining = null;
    this.#restarting = null;
    open();
    resume();
  }
}

/** Thrown by `takeId` when no spare database is bound: the caller should retry shortly. */
export class PoolEmpty extends Error {}

/** Reads a Worker's response whole, inside the gate: a restart must not cut it half-sent. */
async function readResponse(response) {
  const body = Buffer.from(await response.arrayBuffer());
  return { status: response.status, headers: response.headers, body };
}

/** Thrown by `dispatch` and `scheduled` when the Worker asked for is not deployed. */
export class NotDeployed extends Error {}

/** The name of the helper Worker; no script may take it. */
export const HELPER = "tenantry-cloud-helper";

export class Runtime {
  /**
   * @param {object} opts
   * @param {() => Promise<object[]>} opts.workers Miniflare (v4-style) options of the Workers to
   *   run (the deployed scripts), bindings included; called at every restart so they always
   *   reflect what is deployed.
   * @param {string} opts.entry the Worker that `dispatch` sends requests to
   * @param {string} opts.persistPath where D1 data lives (survives restarts and new processes)
   * @param {number} [opts.poolSize] spare database slots to keep bound
   * @param {(msg: string) => void} [opts.log]
   * @param {() => object[]} [opts.extraWorkers] more Workers to run on the same workerd (the
   *   benchmark's bare Worker)
   * @param {number} [opts.inspectorPort] open workerd's V8 inspector there (the benchmark's
   *   profiler: `ws://127.0.0.1:<port>/core:user:<worker>`)
   */
  constructor({ workers, entry, persistPath, poolSize = 64, log = () => {}, extraWorkers = () => [], inspectorPort }) {
    this.workers = workers;
    this.entry = entry;
    /** names of the Workers running now */
    this.running = new Set();
    this.inspectorPort = inspectorPort;
    this.extraWorkers = extraWorkers;
    this.persistPath = persistPath;
    this.poolSize = poolSize;
    this.log = log;
    this.gate = new Gate();
    this.mf = null;
    this.helper = null;
    /** database id -> slot binding name, for every id the helper is bound to */
    this.bound = new Map();
    this.spare = []; // ids bound but not handed out
    this.retired = new Set(); // ids to unbind at the next restart
    this.restarts = 0;
    this.#pending = null;
    this.#dirty = false;
  }

  #pending;
  #dirty;

  /** Binds `ids` (existing databases) and fills the pool, then starts workerd. */
  async start(ids) {
    for (const id of ids) this.#bind(id);
    this.#fillPool();
    const options = await this.#options();
    this.mf = new Miniflare(options);
    await this.mf.ready;
    this.#running(options);
    this.helper = await this.#worker(HELPER);
  }

  async dispose() {
    await this.mf?.dispose();
    this.mf = null;
  }

  /**
   * Kills workerd at once (SIGKILL, no drain): every Worker invocation in flight dies wherever it
   * stands, as when a Worker is cut off in production. For the crash tests.
   */
  async kill() {
    const mf = this.mf;
    this.mf = null;
    await mf?.dispose();
  }

  /**
   * Hands out a fresh database id, bound already. Never waits for a restart (the caller may be
   * inside a Worker request that the restart would drain): with the pool empty it asks for a
   * refill and throws `PoolEmpty`.
   */
  takeId() {
    if (this.spare.length === 0) {
      this.requestRestart("database pool empty");
      throw new PoolEmpty("no spare database is bound yet");
    }
    const id = this.spare.shift();
    if (this.spare.length < this.poolSize / 2) this.requestRestart("refilling the database pool");
    return id;
  }

  /** Stops binding `id` to the helper from the next restart on. */
  retire(id) {
    this.retired.add(id);
  }

  /** Runs `fn` inside the gate, so no restart cuts it short. */
  async within(fn, passDrain = false) {
    await this.gate.enter(passDrain);
    try {
      return await fn();
    } finally {
      this.gate.leave();
    }
  }

  /**
   * Sends a request to the entry Worker, waiting out any restart. Throws `NotDeployed` when no
   * version of it is deployed.
   */
  dispatch(url, init) {
    return this.#withDeployed(this.entry, async () => readResponse(await this.mf.dispatchFetch(url, init)));
  }

  /** Sends a request to Worker `script` (any deployed script, not only the entry). */
  dispatchTo(script, url, init) {
    return this.#withDeployed(script, async () => readResponse(await (await this.#worker(script)).fetch(url, init)));
  }

  /**
   * The address of Worker `name`'s own socket on workerd (one it was given `unsafeDirectSockets`
   * for): requests there skip Miniflare's entry Worker and this process entirely.
   */
  directUrl(name) {
    return this.mf.unsafeGetDirectURL(name);
  }

  /** Runs Worker `script`'s scheduled handler once (a cron trigger firing). */
  scheduled(cron, script = this.entry) {
    return this.#withDeployed(script, async () => {
      const worker = await this.#worker(script);
      const result = await worker.scheduled({ cron, scheduledTime: new Date() });
      return { outcome: result.outcome };
    });
  }

  /**
   * Runs statements on database `id` through the helper.
   * @param {"query"|"raw"|"export"} mode
   */
  d1(id, mode, statements = []) {
    return this.within(async () => {
      const slot = this.bound.get(id);
      if (!slot) throw new Error(`database ${id} is not bound to the helper`);
      const response = await this.helper.fetch(`http://helper/?slot=${slot}`, {
        method: "POST",
        body: JSON.stringify({ mode, statements }),
      });
      return response.json();
    }, true);
  }

  /** Resolves once every restart asked for so far has happened (what was deployed serves). */
  async settled() {
    while (this.#pending) await this.#pending;
  }

  /** Asks for a restart soon; changes asked for meanwhile share it. */
  requestRestart(reason) {
    this.restart(reason).catch((e) => this.log(`restart failed: ${e.message}`));
  }

  /** Restarts workerd with the current options; resolves when the new options are live. */
  async restart(reason) {
    this.#dirty = true;
    while (this.#pending) await this.#pending;
    if (!this.#dirty) return; // someone else's restart already carried our change
    this.#pending = this.#doRestart(reason).finally(() => (this.#pending = null));
    return this.#pending;
  }

  async #doRestart(reason) {
    this.#dirty = false;
    const started = performance.now();
    const drained = await this.gate.drain(DRAIN_TIMEOUT_MS);
    if (!drained) this.log(`restart (${reason}): requests still in flight after ${DRAIN_TIMEOUT_MS} ms were cut`);
    this.gate.closeForRestart();
    try {
      for (const id of this.retired) this.bound.delete(id);
      this.retired.clear();
      this.#fillPool();
      const options = await this.#options();
      try {
        await this.mf.setOptions(options);
      } catch (e) {
        // The previous Workers keep serving; the change is retried at the next restart.
        this.log(`restart (${reason}) failed, the previous Workers keep serving: ${e.message}`);
        this.#dirty = true;
        await this.mf.setOptions(this.#lastGood);
        throw e;
      }
      this.#running(options);
      this.helper = await this.#worker(HELPER);
      this.restarts++;
      this.log(`workerd restarted (${reason}) in ${Math.round(performance.now() - started)} ms`);
    } finally {
      this.gate.open();
    }
  }

  #bind(id) {
    if (!this.bound.has(id)) this.bound.set(id, `DB_${id.replaceAll("-", "_")}`);
  }

  #fillPool() {
    while (this.spare.length < this.poolSize) {
      const id = randomUUID();
      this.#bind(id);
      this.spare.push(id);
    }
  }

  /** Runs `fn` inside the gate once Worker `script` is known to run; `NotDeployed` otherwise. */
  #withDeployed(script, fn) {
    return this.within(async () => {
      if (!this.running.has(script)) throw new NotDeployed(`no version of Worker ${script} is deployed`);
      return fn();
    });
  }

  /**
   * A Worker's handle (`fetch`, `scheduled`). Typed loosely: Miniflare's declaration of
   * `getWorker` does not match what it returns.
   * @returns {Promise<any>}
   */
  #worker(name) {
    return this.mf.getWorker(name);
  }

  #lastGood;

  #running(options) {
    this.#lastGood = options;
    this.running = new Set(options.workers.map((w) => w.config?.name ?? w.name));
  }

  async #options() {
    // `workers()` entries are v4-style Worker options built at run time: typed as plain objects.
    return convertV4MiniflareOptions(
      /** @type {any} */ ({
        resourcePersistencePath: this.persistPath,
        ...(this.inspectorPort === undefined ? {} : { inspectorPort: this.inspectorPort }),
        workers: [
          ...(await this.workers()),
          ...this.extraWorkers(),
          {
            name: HELPER,
            modules: true,
            script: HELPER_SCRIPT,
            compatibilityDate: "2025-01-01",
            d1Databases: Object.fromEntries([...this.bound].map(([id, slot]) => [slot, id])),
          },
        ],
      }),
    );
  }
}
