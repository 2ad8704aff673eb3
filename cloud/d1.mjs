// The D1 endpoints of the local cloud: databases (create, list, get, delete), queries (`/query`,
// `/raw`), the export and import protocols wrangler uses, and Time Travel (timetravel.mjs),
// backed by Miniflare's real D1 through the runtime's helper Worker.

import { createHash, randomBytes } from "node:crypto";
import { ApiError, intParam, malformed, parseJson } from "./http.mjs";
import { PoolEmpty } from "./runtime.mjs";
import { splitStatements } from "./sql.mjs";

const EXPORT_TTL_MS = 60 * 60 * 1000;
const DATABASE_NAME = /^[A-Za-z0-9_-]{1,64}$/;
const LOCATION_HINTS = ["wnam", "enam", "weur", "eeur", "apac", "oc"];

export class D1 {
  /**
   * @param {object} opts
   * @param {import("./state.mjs").State} opts.state
   * @param {import("./runtime.mjs").Runtime} opts.runtime
   * @param {() => string} opts.baseUrl the local cloud's own address (for signed URLs)
   * @param {number} [opts.maxDatabases] databases per account (50 000 on the paid plan)
   * @param {import("./timetravel.mjs").TimeTravel} opts.timeTravel
   * @param {(msg: string) => void} [opts.log]
   */
  constructor({ state, runtime, baseUrl, maxDatabases = 50_000, timeTravel, log = () => {} }) {
    this.state = state;
    this.timeTravel = timeTravel;
    this.log = log;
    this.runtime = runtime;
    this.baseUrl = baseUrl;
    this.maxDatabases = maxDatabases;
    /** @type {Map<string, { token: string, filename: string, sql: string, expires: number }>} bookmark -> export */
    this.exports = new Map();
    /** @type {Map<string, { db: string, filename: string, etag: string, sql: string | null, md5?: string, expires: number }>} token -> upload */
    this.uploads = new Map();
    /** @type {Map<string, { status: "complete" | "error", error?: string, result?: object }>} bookmark -> the finished import's outcome */
    this.imports = new Map();
  }

  /**
   * The routes under `/accounts/{id}/d1/database`: `p` is the path after it.
   * @returns {{ endpoint: string, run: (r: any) => any } | null}
   */
  route(method, p, on) {
    if (p.length === 0)
      return method === "POST" ? on("d1.create", "POST", (r) => this.create(r)) : on("d1.list", "GET", (r) => this.list(r));
    const id = p[0];
    if (p.length === 1)
      return method === "DELETE" ? on("d1.delete", "DELETE", () => this.delete(id)) : on("d1.get", "GET", () => this.get(id));
    if (p.length === 2 && ["query", "raw", "export", "import"].includes(p[1])) {
      const op = p[1];
      const run = { export: this.export, import: this.import }[op];
      return on(`d1.${op}`, "POST", (r) => (run ? run.call(this, id, r) : this.query(id, op, r)));
    }
    if (p.length === 3 && p[1] === "time_travel" && p[2] === "bookmark")
      return on("d1.time_travel.bookmark", "GET", ({ url }) => this.bookmark(id, url));
    if (p.length === 3 && p[1] === "time_travel" && p[2] === "restore")
      return on("d1.time_travel.restore", "POST", ({ url }) => this.restore(id, url));
    return null;
  }

  /**
   * The signed URLs of exports (GET) and imports (PUT), outside the API: the token in the path is
   * the credential, as with a presigned URL.
   * @returns {object | null} an answer, or null when `pathname` is not one of them
   */
  transfer(method, pathname, body) {
    const exp = /^\/__cloud\/exports\/([0-9a-f]+)\/[^/]+$/.exec(pathname);
    if (exp && method === "GET") {
      const job = [...this.exports.values()].find((j) => j.token === exp[1] && j.expires > Date.now());
      if (!job) return { status: 404, contentType: "text/plain", body: "export not found or expired" };
      return { status: 200, contentType: "application/sql", body: job.sql };
    }
    const up = /^\/__cloud\/uploads\/([0-9a-f]+)$/.exec(pathname);
    if (up && method === "PUT") {
      // The answer's ETag is the file's MD5, as R2 (behind the real upload URL) answers.
      const upload = this.uploads.get(up[1]);
      if (!upload || upload.expires < Date.now()) return { status: 404, contentType: "text/plain", body: "upload not found or expired" };
      const md5 = createHash("md5").update(body).digest("hex");
      upload.sql = body.toString("utf8");
      upload.md5 = md5;
      return { status: 200, contentType: "text/plain", headers: { etag: `"${md5}"` }, body: "" };
    }
    return null;
  }

  database(idOrName) {
    const db = this.state.database(idOrName);
    if (!db) throw new ApiError(404, 7404, `The database ${idOrName} could not be found`);
    return db;
  }

  async create({ body }) {
    const input = parseJson(body);
    if (typeof input?.name !== "string" || !DATABASE_NAME.test(input.name)) {
      throw malformed("name is required: 1 to 64 letters, digits, '-' or '_'");
    }
    if (input.primary_location_hint !== undefined && !LOCATION_HINTS.includes(input.primary_location_hint)) {
      throw malformed(`primary_location_hint must be one of ${LOCATION_HINTS.join(", ")}`);
    }
    if (input.jurisdiction !== undefined && !["eu", "fedramp"].includes(input.jurisdiction)) {
      throw malformed("jurisdiction must be eu or fedramp");
    }
    if (this.state.databases().some((d) => d.name === input.name)) {
      throw new ApiError(400, 7502, "A database with that name already exists");
    }
    if (this.state.databases().length >= this.maxDatabases) {
      throw new ApiError(400, 7406, "Your account has exceeded the maximum number of D1 databases");
    }
    let uuid;
    try {
      uuid = this.runtime.takeId();
    } catch (e) {
      if (!(e instanceof PoolEmpty)) throw e;
      // Every pre-bound database is taken; a refill is on its way (see runtime.mjs).
      throw new ApiError(429, 971, "Too many databases created at once; retry shortly", { "retry-after": "1" });
    }
    // Re-check after the await: a concurrent create of the same name may have won meanwhile.
    if (this.state.databases().some((d) => d.name === input.name)) {
      this.runtime.retire(uuid);
      throw new ApiError(400, 7502, "A database with that name already exists");
    }
    const db = {
      uuid,
      name: input.name,
      created_at: new Date().toISOString(),
      version: "production",
      num_tables: 0,
      file_size: 0,
      ...(input.jurisdiction ? { jurisdiction: input.jurisdiction } : {}),
      read_replication: { mode: "disabled" },
    };
    this.state.data.databases[uuid] = db;
    await this.state.save();
    // Time Travel's first bookmark: the empty database. Without it the history starts at the
    // detector's first capture; the database itself is fine either way.
    await this.timeTravel.created(uuid, Date.parse(db.created_at)).catch((e) => this.log(`time travel: ${e.message}`));
    return { result: db };
  }

  list({ url }) {
    const page = intParam(url, "page", 1, 1, 1_000_000);
    const perPage = intParam(url, "per_page", 1000, 10, 10_000);
    const name = url.searchParams.get("name");
    // The real filter's exactness is undocumented; this one matches substrings, so clients
    // must (and tenantry does) compare names exactly themselves.
    const all = this.state
      .databases()
      .filter((d) => name === null || d.name.includes(name))
      .sort((a, b) => a.created_at.localeCompare(b.created_at) || a.name.localeCompare(b.name));
    const items = all.slice((page - 1) * perPage, page * perPage);
    return { result: items, result_info: { page, per_page: perPage, count: items.length, total_count: all.length } };
  }

  async get(idOrName) {
    const db = this.database(idOrName);
    await this.refreshStats(db);
    return { result: db };
  }

  /** Reads `num_tables` and `file_size` from the database itself, as the real API reports them. */
  async refreshStats(db) {
    const out = await this.runtime.d1(db.uuid, "query", [
      { sql: "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_cf_%'" },
    ]);
    if (out.ok) {
      db.num_tables = out.results[0].results[0].n;
      db.file_size = out.results[0].meta.size_after ?? db.file_size;
    }
  }

  async delete(idOrName) {
    const db = this.database(idOrName);
    // Wipe the data first: Miniflare keeps a database's file even when nothing binds it.
    const objects = await this.runtime.d1(db.uuid, "query", [
      {
        sql: "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_cf_%'",
      },
    ]);
    if (!objects.ok) throw new ApiError(500, 7500, "Internal error");
    const drops = objects.results[0].results.map((o) => ({
      sql: `DROP ${o.type.toUpperCase()} IF EXISTS "${o.name.replaceAll('"', '""')}"`,
    }));
    if (drops.length) {
      const dropped = await this.runtime.d1(db.uuid, "query", [{ sql: "PRAGMA defer_foreign_keys = on" }, ...drops]);
      if (!dropped.ok) throw new ApiError(500, 7500, "Internal error");
    }
    delete this.state.data.databases[db.uuid];
    this.runtime.retire(db.uuid);
    await this.state.save();
    await this.timeTravel.deleted(db.uuid);
    return { result: null };
  }

  /** `GET /time_travel/bookmark?timestamp=`: `{ bookmark }` (see timetravel.mjs). */
  async bookmark(idOrName, url) {
    const db = this.database(idOrName);
    return { result: await this.timeTravel.bookmark(db.uuid, url.searchParams.get("timestamp")) };
  }

  /** `POST /time_travel/restore?bookmark=|timestamp=`: `{ bookmark, previous_bookmark, message }`. */
  async restore(idOrName, url) {
    const db = this.database(idOrName);
    const result = await this.timeTravel.restore(db.uuid, {
      bookmark: url.searchParams.get("bookmark"),
      timestamp: url.searchParams.get("timestamp"),
    });
    await this.refreshStats(db);
    await this.state.save();
    return { result };
  }

  /** `/query` and `/raw`: one statement, several `;`-separated ones, or a `batch`. */
  async query(idOrName, op, { body }) {
    const db = this.database(idOrName);
    const input = parseJson(body);
    const items = Array.isArray(input?.batch) ? input.batch : [input];
    const statements = [];
    for (const item of items) {
      if (typeof item?.sql !== "string") throw malformed("sql is required");
      if (item.params !== undefined && !Array.isArray(item.params)) throw malformed("params must be an array");
      const parts = splitStatements(item.sql);
      if (item.params?.length && parts.length > 1) throw malformed("params can only be used with a single statement");
      for (const sql of parts) statements.push({ sql, params: item.params ?? [] });
    }
    if (statements.length === 0) throw new ApiError(400, 7500, "No SQL statements detected.");
    const out = await this.runtime.d1(db.uuid, op, statements);
    if (!out.ok) throw new ApiError(400, 7500, `${out.error}`);
    if (op === "raw") {
      return { result: out.results.map((r) => ({ results: r, success: true, meta: {} })) };
    }
    const last = out.results.at(-1)?.meta;
    if (last?.size_after !== undefined) db.file_size = last.size_after;
    // A schema change changes what list reports too.
    if (statements.some((st) => /^\s*(CREATE|DROP|ALTER)\b/i.test(st.sql))) await this.refreshStats(db);
    return { result: out.results.map((r) => ({ results: r.results, success: true, meta: r.meta })) };
  }

  /** `/export` with the polling protocol wrangler uses. */
  async export(idOrName, { body }) {
    const db = this.database(idOrName);
    const input = parseJson(body);
    if (input?.output_format !== "polling") throw malformed("output_format must be polling");
    const now = Date.now();
    for (const [k, v] of this.exports) if (v.expires < now) this.exports.delete(k);
    if (input.current_bookmark === undefined) {
      // Start: take the dump now (the real export also blocks the database while it runs), and
      // report it as still running, so clients must poll as they must against the real API.
      const dump = await this.runtime.d1(db.uuid, "export");
      if (!dump.ok) throw new ApiError(500, 7500, "Internal error");
      const bookmark = randomBytes(16).toString("hex");
      const filename = `${db.name}-${new Date(now).toISOString().replace(/[:.]/g, "-")}.sql`;
      this.exports.set(bookmark, { token: randomBytes(24).toString("hex"), filename, sql: dump.sql, expires: now + EXPORT_TTL_MS });
      return {
        result: { success: true, type: "export", at_bookmark: bookmark, status: "active", messages: ["Generating SQL dump"], error: "" },
      };
    }
    const job = this.exports.get(input.current_bookmark);
    if (!job) {
      return {
        result: {
          success: true,
          type: "export",
          at_bookmark: input.current_bookmark,
          status: "error",
          messages: [],
          error: "Unknown or expired export bookmark",
        },
      };
    }
    const signed_url = `${this.baseUrl()}/__cloud/exports/${job.token}/${encodeURIComponent(job.filename)}`;
    return {
      result: {
        success: true,
        type: "export",
        at_bookmark: input.current_bookmark,
        status: "complete",
        messages: ["Uploaded part 1"],
        error: "",
        result: { filename: job.filename, signed_url },
      },
    };
  }

  /**
   * `/import`, the protocol of `wrangler d1 execute --remote --file`: `init` (with the file's MD5
   * as `etag`) answers an upload URL; the client PUTs the file there (answered with the MD5 as
   * `ETag`); `ingest` runs it, all statements in one transaction (a failing file changes nothing);
   * `poll` reports the outcome.
   */
  async import(idOrName, { body }) {
    const db = this.database(idOrName);
    const input = parseJson(body);
    const now = Date.now();
    for (const [k, v] of this.uploads) if (v.expires < now) this.uploads.delete(k);
    const answer = (fields) => ({ result: { success: true, type: "import", messages: [], error: "", ...fields } });
    switch (input?.action) {
      case "init": {
        if (typeof input.etag !== "string" || !/^[0-9a-f]{32}$/.test(input.etag)) throw malformed("etag must be the file's MD5 (hex)");
        const token = randomBytes(24).toString("hex");
        const filename = `${input.etag}.sql`;
        this.uploads.set(token, { db: db.uuid, filename, etag: input.etag, sql: null, expires: now + EXPORT_TTL_MS });
        return answer({ filename, upload_url: `${this.baseUrl()}/__cloud/uploads/${token}` });
      }
      case "ingest": {
        const upload = [...this.uploads.values()].find((u) => u.db === db.uuid && u.filename === input.filename && u.sql !== null);
        if (!upload) return answer({ success: false, status: "error", error: "Unknown upload: call init and upload the file first" });
        if (upload.etag !== input.etag || upload.md5 !== input.etag)
          return answer({ success: false, status: "error", error: "The etag does not match the uploaded file" });
        const started = performance.now();
        const statements = splitStatements(upload.sql).map((sql) => ({ sql, params: [] }));
        const bookmark = randomBytes(16).toString("hex");
        if (statements.length === 0) {
          this.imports.set(bookmark, { status: "error", error: "No SQL statements detected." });
        } else {
          const out = await this.runtime.d1(db.uuid, "query", statements);
          if (!out.ok) {
            this.imports.set(bookmark, { status: "error", error: out.error });
          } else {
            await this.refreshStats(db);
            await this.state.save();
            const sum = (k) => out.results.reduce((n, r) => n + (r.meta?.[k] ?? 0), 0);
            this.imports.set(bookmark, {
              status: "complete",
              result: {
                success: true,
                num_queries: statements.length,
                final_bookmark: bookmark,
                meta: {
                  served_by: "tenantry-local-cloud",
                  duration: performance.now() - started,
                  changes: sum("changes"),
                  last_row_id: out.results.at(-1)?.meta?.last_row_id ?? 0,
                  changed_db: sum("changes") > 0,
                  size_after: db.file_size,
                  rows_read: sum("rows_read"),
                  rows_written: sum("rows_written"),
                },
              },
            });
          }
        }
        // Like the real API: the first answer says it is running; the client polls.
        return answer({ status: "active", at_bookmark: bookmark, messages: ["Ingesting the file"] });
      }
      case "poll": {
        const job = this.imports.get(input.current_bookmark);
        if (!job) return answer({ success: false, status: "error", error: "Unknown import bookmark", at_bookmark: input.current_bookmark });
        if (job.status === "error")
          return answer({ success: false, status: "error", error: job.error, errors: [job.error], at_bookmark: input.current_bookmark });
        return answer({ status: "complete", at_bookmark: input.current_bookmark, result: job.result, messages: ["Import complete"] });
      }
      default:
        throw malformed("action must be init, ingest or poll");
    }
  }
}
