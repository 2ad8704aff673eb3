// D1 Time Travel for the local cloud: `GET /d1/database/{id}/time_travel/bookmark?timestamp=` and
// `POST /d1/database/{id}/time_travel/restore?bookmark=|timestamp=`, in place (same database id).
//
// Tenants' writes go from workerd straight to Miniflare's D1 Durable Object, never through the
// local cloud, so history is kept by watching the databases' files: Miniflare keeps database
// `<uuid>` in `<persist>/d1/miniflare-D1DatabaseObject/<hex>.sqlite` (+ `-wal`), `<hex>` being
// workerd's Durable Object id `idFromName(uuid)` for the unique key `miniflare-D1DatabaseObject`.
// A detector stats those files every `intervalMs` (stat calls only, no D1 call, for a database
// whose files did not change); a changed database is dumped (the helper's "export" mode) and the
// dump kept as a snapshot valid from the files' newest mtime (the time of its last write), unless
// it equals the previous snapshot. Snapshots are also taken at create (the empty database), by
// every bookmark call and right before every restore (that one is the restore's
// `previous_bookmark`).
//
// Resolution: the real Time Travel keeps every write; this one keeps the state at each poll, so
// two writes within one interval (default 200 ms) are one step of history, and a timestamp that
// falls between them resolves to the state before both. A bookmark call first brings the history
// up to date, so "write, ask the current bookmark, write again" always tells the two states apart.
//
// Bookmarks have the real format (`00000085-0000024c-00004c6d-8e61117b...`: three 8-hex-digit
// fields and 32 hex digits) and sort in time order: validFrom in ms (high and low 32 bits), a
// per-database sequence number, then a hash of the database id and the content.
//
// Limits as documented (developers.cloudflare.com/d1/reference/time-travel): 30 days of history
// (Workers Paid), 10 restores per 10 minutes per database. The error codes for a bad bookmark or
// timestamp and for the restore limit are not documented (wrangler refuses future and too-old
// timestamps before calling): the ones below are our choice.
//
// Snapshots live under `<dir>/<uuid>/` (`index.json` + one gzipped dump each), at most
// `maxSnapshots` per database (oldest dropped) and none superseded more than 30 days ago.
// Everything done to one database (a detector capture, a bookmark call, a restore) runs on that
// database's promise chain, one at a time.

import { createHash, createHmac } from "node:crypto";
import { mkdir, readFile, rename, rm, stat, unlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { gunzip, gzip } from "node:zlib";
import { ApiError, malformed } from "./http.mjs";
import { splitStatements } from "./sql.mjs";

const gzipAsync = promisify(gzip);
const gunzipAsync = promisify(gunzip);

export const RETENTION_MS = 30 * 24 * 60 * 60 * 1000;
export const RESTORE_WINDOW_MS = 10 * 60 * 1000;
export const RESTORES_PER_WINDOW = 10;
const BOOKMARK = /^[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{32}$/;
/** Dumps the detector takes at once (across databases): bounds its load on workerd. */
const DETECTOR_CONCURRENCY = 2;
/** A forced capture retries a dump this often while writes keep landing during it. */
const STABLE_TRIES = 3;

/** The file name (without `-wal`) Miniflare stores D1 database `uuid` in. */
export function d1FileName(uuid) {
  const key = createHash("sha256").update("miniflare-D1DatabaseObject").digest();
  const a = createHmac("sha256", key).update(uuid).digest().subarray(0, 16);
  const m = createHmac("sha256", key).update(a).digest().subarray(0, 16);
  return `${Buffer.concat([a, m]).toString("hex")}.sqlite`;
}

const hex8 = (n) => (n >>> 0).toString(16).padStart(8, "0");

/**
 * @typedef {{ bookmark: string, validFrom: number, hash: string, file: string }} Snapshot
 * @typedef {{ seq: number, sig: string | null, restores: number[], snapshots: Snapshot[] }} History
 */

export class TimeTravel {
  /**
   * @param {object} opts
   * @param {string} opts.dir where histories are kept (`<stateDir>/time-travel`)
   * @param {string} opts.d1Dir Miniflare's D1 files (`<persist>/d1/miniflare-D1DatabaseObject`)
   * @param {(id: string, mode: "query"|"export", statements?: object[]) => Promise<any>} opts.d1 the runtime's helper
   * @param {() => string[]} opts.databases the ids of the databases that exist
   * @param {number} [opts.intervalMs] detector period; 0: no detector (history is then taken only
   *   at create, bookmark calls and restores)
   * @param {number} [opts.maxSnapshots] per database
   * @param {(msg: string) => void} [opts.log]
   */
  constructor({ dir, d1Dir, d1, databases, intervalMs = 200, maxSnapshots = 200, log = () => {} }) {
    this.dir = dir;
    this.d1Dir = d1Dir;
    this.d1 = d1;
    this.databases = databases;
    this.intervalMs = intervalMs;
    this.maxSnapshots = maxSnapshots;
    this.log = log;
    /** @type {Map<string, History>} loaded histories */
    this.histories = new Map();
    /** @type {Map<string, Promise<unknown>>} per-database chains */
    this.chains = new Map();
    /** @type {Set<string>} deleted databases (a capture queued before the delete does nothing) */
    this.gone = new Set();
    /** @type {NodeJS.Timeout | null} */
    this.timer = null;
    this.stopped = true;
  }

  /** Starts the detector (when `intervalMs` > 0). */
  start() {
    if (this.intervalMs <= 0 || !this.stopped) return;
    this.stopped = false;
    const loop = async () => {
      try {
        await this.tick();
      } catch (e) {
        this.log(`time travel: detector pass failed: ${e.stack ?? e}`);
      }
      if (!this.stopped) this.timer = setTimeout(loop, this.intervalMs).unref();
    };
    this.timer = setTimeout(loop, this.intervalMs).unref();
  }

  /** Stops the detector; resolves once every capture under way has finished. */
  async stop() {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await Promise.allSettled([...this.chains.values()]);
  }

  /** One detector pass: stat every database, capture the changed ones. */
  async tick() {
    const changed = [];
    for (const id of this.databases()) {
      const history = await this.#history(id);
      if ((await this.#sig(id)).key !== history.sig) changed.push(id);
      if (this.stopped) return;
    }
    for (let i = 0; i < changed.length && !this.stopped; i += DETECTOR_CONCURRENCY) {
      const batch = changed.slice(i, i + DETECTOR_CONCURRENCY);
      await Promise.all(batch.map((id) => this.#serial(id, () => (this.gone.has(id) ? null : this.#capture(id, false)))));
    }
  }

  /** A new database: its first snapshot (the empty database), valid from its creation. */
  created(id, createdAt) {
    return this.#serial(id, () => this.#capture(id, true, createdAt));
  }

  /** A deleted database: its history goes with it. */
  async deleted(id) {
    this.gone.add(id);
    await this.#serial(id, async () => {
      this.histories.delete(id);
      await rm(path.join(this.dir, id), { recursive: true, force: true });
    });
    this.chains.delete(id);
  }

  /**
   * `GET .../time_travel/bookmark`: the bookmark of the state at `timestamp` (the latest state
   * written at or before it), or of the current state without one.
   * @param {string} id
   * @param {string | null} timestamp
   */
  bookmark(id, timestamp) {
    const at = timestamp === null ? null : parseTimestamp(timestamp);
    return this.#serial(id, async () => {
      const current = await this.#capture(id, true);
      const snapshot = at === null ? current : this.#at(await this.#history(id), at);
      return { bookmark: snapshot.bookmark };
    });
  }

  /**
   * `POST .../time_travel/restore`: replaces the database's content with the state at `bookmark`
   * (or `timestamp`), in one transaction.
   * @param {string} id
   * @param {{ bookmark: string | null, timestamp: string | null }} target
   */
  restore(id, { bookmark, timestamp }) {
    if (bookmark === null && timestamp === null) throw malformed("bookmark or timestamp is required");
    if (bookmark !== null && timestamp !== null) throw malformed("give bookmark or timestamp, not both");
    if (bookmark !== null && !BOOKMARK.test(bookmark)) throw new ApiError(400, 7400, `Invalid bookmark: ${bookmark}`);
    const at = timestamp === null ? null : parseTimestamp(timestamp);
    return this.#serial(id, async () => {
      const history = await this.#history(id);
      const now = Date.now();
      history.restores = history.restores.filter((t) => t > now - RESTORE_WINDOW_MS);
      if (history.restores.length >= RESTORES_PER_WINDOW) {
        const retryAfter = Math.ceil((history.restores[0] + RESTORE_WINDOW_MS - now) / 1000);
        // Our choice of status and code (undocumented): 429 so that clients back off and retry.
        throw new ApiError(
          429,
          7429,
          `Time Travel restore limit reached: at most ${RESTORES_PER_WINDOW} restores per 10 minutes per database`,
          { "retry-after": String(Math.max(1, retryAfter)) },
        );
      }
      const previous = await this.#capture(id, true);
      const target = at === null ? history.snapshots.find((s) => s.bookmark === bookmark) : this.#at(history, at);
      if (!target)
        throw new ApiError(400, 7400, `Invalid bookmark: ${bookmark} is not a bookmark of this database within the last 30 days`);
      // Reserved before the slow work, released if it fails.
      history.restores.push(now);
      try {
        const dump = (await gunzipAsync(await readFile(path.join(this.dir, id, target.file)))).toString("utf8");
        const objects = await this.d1(id, "query", [
          {
            sql: "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_cf_%'",
          },
        ]);
        if (!objects.ok) throw new Error(`listing the schema failed: ${objects.error}`);
        const rows = /** @type {{ type: string, name: string }[]} */ (objects.results[0].results);
        // Views first: a view over a dropped table would not stop the drop, but keep it simple.
        rows.sort((a, b) => (a.type === b.type ? 0 : a.type === "view" ? -1 : 1));
        const drops = rows.map((o) => ({ sql: `DROP ${o.type.toUpperCase()} IF EXISTS "${o.name.replaceAll('"', '""')}"` }));
        const statements = [{ sql: "PRAGMA defer_foreign_keys = on" }, ...drops, ...splitStatements(dump).map((sql) => ({ sql }))];
        const out = await this.d1(id, "query", statements);
        if (!out.ok) throw new Error(`restoring failed: ${out.error}`);
      } catch (e) {
        history.restores.pop();
        await this.#save(id, history);
        throw e;
      }
      const restored = await this.#capture(id, true);
      return {
        bookmark: restored.bookmark,
        previous_bookmark: previous.bookmark,
        message: `Database restored to bookmark ${target.bookmark}`,
      };
    });
  }

  // ---------------------------------------------------------------------------------------------

  /** The latest snapshot valid at `at` (ms), or a 400 when there is none. */
  #at(history, at) {
    let found = null;
    for (const s of history.snapshots) if (s.validFrom <= at) found = s;
    if (!found) throw new ApiError(400, 7400, `No bookmark at ${new Date(at).toISOString()}: the database did not exist yet`);
    return found;
  }

  /** Runs `fn` after everything queued for database `id`. */
  #serial(id, fn) {
    const next = (this.chains.get(id) ?? Promise.resolve()).then(fn, fn);
    const settled = next.catch(() => {});
    this.chains.set(id, settled);
    settled.then(() => {
      if (this.chains.get(id) === settled) this.chains.delete(id);
    });
    return next;
  }

  /** The database files' signature (mtimes and sizes) and newest mtime. */
  async #sig(id) {
    const base = path.join(this.d1Dir, d1FileName(id));
    const parts = [];
    let newest = 0;
    for (const file of [base, `${base}-wal`]) {
      try {
        const s = await stat(file);
        parts.push(`${s.mtimeMs}:${s.size}`);
        newest = Math.max(newest, s.mtimeMs);
      } catch (e) {
        if (e.code !== "ENOENT") throw e;
        parts.push("-");
      }
    }
    return { key: parts.join("|"), newest };
  }

  /**
   * Brings the history of `id` up to date; returns its latest snapshot. Unforced (the detector):
   * nothing to do when the files did not change, and a dump that raced a write is dropped (the
   * next pass takes it again). Forced: dumps anyway, retrying while writes race it.
   * @param {string} id
   * @param {boolean} force
   * @param {number} [validFrom] the snapshot's time when known (create)
   * @returns {Promise<Snapshot>}
   */
  async #capture(id, force, validFrom) {
    const history = await this.#history(id);
    for (let attempt = 1; ; attempt++) {
      const before = await this.#sig(id);
      if (!force && before.key === history.sig) return history.snapshots.at(-1);
      const dump = await this.d1(id, "export");
      if (!dump.ok) throw new Error(`time travel: dumping ${id} failed: ${dump.error}`);
      const after = await this.#sig(id);
      if (after.key !== before.key) {
        // Written to during the dump: the detector leaves it to its next pass; a forced capture
        // tries again, then keeps the last dump, valid from the newest write it saw.
        if (!force) return history.snapshots.at(-1);
        if (attempt < STABLE_TRIES) continue;
      }
      const hash = createHash("sha256").update(id).update("\n").update(dump.sql).digest("hex");
      const last = history.snapshots.at(-1);
      history.sig = after.key;
      if (last?.hash === hash) {
        await this.#save(id, history);
        return last;
      }
      const from = Math.max(Math.floor(validFrom ?? (after.newest || Date.now())), last?.validFrom ?? 0);
      const seq = ++history.seq;
      const bookmark = `${hex8(Math.floor(from / 2 ** 32))}-${hex8(from % 2 ** 32)}-${hex8(seq)}-${hash.slice(0, 32)}`;
      const snapshot = { bookmark, validFrom: from, hash, file: `${hex8(seq)}.sql.gz` };
      await mkdir(path.join(this.dir, id), { recursive: true });
      await writeFile(path.join(this.dir, id, snapshot.file), await gzipAsync(dump.sql));
      history.snapshots.push(snapshot);
      await this.#prune(id, history);
      await this.#save(id, history);
      return snapshot;
    }
  }

  /** Drops snapshots past the cap, and those superseded before the retention window. */
  async #prune(id, history) {
    const cutoff = Date.now() - RETENTION_MS;
    const drop = [];
    while (history.snapshots.length > this.maxSnapshots) drop.push(history.snapshots.shift());
    while (history.snapshots.length > 1 && history.snapshots[1].validFrom <= cutoff) drop.push(history.snapshots.shift());
    for (const s of drop) await unlink(path.join(this.dir, id, s.file)).catch(() => {});
  }

  /** The history of `id`, loaded from disk on first use. */
  async #history(id) {
    let history = this.histories.get(id);
    if (history) return history;
    try {
      history = JSON.parse(await readFile(path.join(this.dir, id, "index.json"), "utf8"));
    } catch (e) {
      if (e.code !== "ENOENT") throw e;
      history = { seq: 0, sig: null, restores: [], snapshots: [] };
    }
    // Another caller may have loaded it meanwhile: keep the first.
    if (!this.histories.has(id)) this.histories.set(id, history);
    return /** @type {History} */ (this.histories.get(id));
  }

  async #save(id, history) {
    const dir = path.join(this.dir, id);
    await mkdir(dir, { recursive: true });
    const tmp = path.join(dir, `index.json.${process.pid}.tmp`);
    await writeFile(tmp, JSON.stringify(history));
    await rename(tmp, path.join(dir, "index.json"));
  }
}

/**
 * A `timestamp` query parameter: RFC 3339 (what wrangler sends) or Unix seconds. Refused (our
 * choice of code: 400/7400) when in the future or older than the 30 days of history.
 * @returns {number} ms since the epoch
 */
export function parseTimestamp(raw) {
  const at = /^\d+(\.\d+)?$/.test(raw) ? Number(raw) * 1000 : Date.parse(raw);
  if (!Number.isFinite(at)) throw new ApiError(400, 7400, `Invalid timestamp '${raw}': give an RFC 3339 date or Unix seconds`);
  const now = Date.now();
  if (at > now) throw new ApiError(400, 7400, `Invalid timestamp '${raw}': it is in the future`);
  if (at < now - RETENTION_MS) throw new ApiError(400, 7400, `Invalid timestamp '${raw}': older than the 30 days of Time Travel history`);
  return at;
}
