// The local cloud: a stand-in for the part of the Cloudflare REST API tenantry calls (D1
// databases, Worker script settings), on loopback, backed by Miniflare's real D1.
//
// Shapes follow the real API: every answer is an envelope
//   { success, errors: [{ code, message }], messages, result, result_info? }
// with the real status codes and error codes (7400 malformed, 7404 unknown database, 7500 SQL
// error, 7502 name taken, 7406 database limit, 971 rate limited, 10000 authentication). Routes
// and behaviour are listed in the README ("The local cloud").

import { createHash, randomBytes } from "node:crypto";
import http from "node:http";
import { Faults } from "./faults.mjs";
import { PoolEmpty } from "./runtime.mjs";
import { splitStatements } from "./sql.mjs";

const MAX_BODY = 10 * 1024 * 1024;
const EXPORT_TTL_MS = 60 * 60 * 1000;
const BINDING_NAME = /^[A-Za-z_$][A-Za-z0-9_$]*$/;
const DATABASE_NAME = /^[A-Za-z0-9_-]{1,64}$/;
const LOCATION_HINTS = ["wnam", "enam", "weur", "eeur", "apac", "oc"];
/** Binding types the local cloud can hand to Miniflare, and the field holding each one's value. */
const BINDING_VALUE = { d1: "id", plain_text: "text", secret_text: "text", json: "json", r2_bucket: "bucket_name" };

class ApiError extends Error {
  constructor(status, code, message, headers = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.headers = headers;
  }
}

const malformed = (message) => new ApiError(400, 7400, message);

export class LocalCloud {
  /**
   * @param {object} opts
   * @param {import("./state.mjs").State} opts.state
   * @param {import("./runtime.mjs").Runtime} opts.runtime
   * @param {string} opts.token the API token clients must send as `Authorization: Bearer ...`
   * @param {string} opts.accountId
   * @param {number} [opts.maxDatabases] databases per account (50 000 on the paid plan)
   * @param {(msg: string) => void} [opts.log]
   */
  constructor({ state, runtime, token, accountId, maxDatabases = 50_000, log = () => {} }) {
    Object.assign(this, { state, runtime, token, accountId, maxDatabases, log });
    this.faults = new Faults();
    this.exports = new Map(); // bookmark -> { status, token, filename, sql, expires }
    this.uploads = new Map(); // upload token -> { db, filename, etag, sql?, expires }
    this.imports = new Map(); // bookmark -> the finished import's poll answer
    this.requests = {}; // endpoint -> count, for tests and benchmarks
    this.server = http.createServer((req, res) => this.#serve(req, res));
    this.url = null;
  }

  async listen(port = 0, host = "127.0.0.1") {
    await new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(port, host, resolve);
    });
    this.url = `http://${host}:${this.server.address().port}`;
    return this.url;
  }

  close() {
    this.server.closeAllConnections?.();
    return new Promise((resolve) => this.server.close(resolve));
  }

  /** The settings of `script`, created empty on first use. */
  script(name) {
    return (this.state.data.scripts[name] ??= { bindings: [], modified_on: new Date().toISOString() });
  }

  // ---------------------------------------------------------------------------------------------

  async #serve(req, res) {
    const url = new URL(req.url, "http://local");
    let answer;
    let fault = null;
    try {
      const body = await readBody(req);
      if (url.pathname.startsWith("/__cloud/")) {
        answer = await this.#control(req.method, url, req.headers, body);
      } else {
        this.#authenticate(req.headers, url.pathname);
        const route = this.#route(req.method, url.pathname);
        this.requests[route.endpoint] = (this.requests[route.endpoint] ?? 0) + 1;
        fault = this.faults.pick(route.endpoint);
        if (fault) this.log(`fault ${fault.kind} on ${route.endpoint}`);
        if (fault?.kind === "error") throw new ApiError(fault.status ?? 500, 7500, "Internal error (injected fault)");
        if (fault?.kind === "rate_limit") {
          const retryAfter = String(fault.retry_after ?? 1);
          throw new ApiError(429, 971, "Please wait and consider throttling your request speed", { "retry-after": retryAfter });
        }
        if (fault?.kind === "delay" || fault?.kind === "timeout") await sleep(fault.delay_ms ?? 30_000);
        if (fault?.kind === "timeout") return res.destroy();
        answer = envelope(await route.run({ url, headers: req.headers, body }));
      }
    } catch (e) {
      if (!(e instanceof ApiError)) {
        this.log(`local cloud: unexpected error on ${req.method} ${url.pathname}: ${e.stack ?? e}`);
        e = new ApiError(500, 7500, "Internal error");
      }
      answer = { status: e.status, headers: e.headers, body: failure(e.code, e.message) };
    }
    if (fault?.kind === "lose_response") return res.destroy();
    const text = typeof answer.body === "string" ? answer.body : JSON.stringify(answer.body);
    res.writeHead(answer.status ?? 200, {
      "content-type": answer.contentType ?? "application/json",
      ...answer.headers,
    });
    res.end(text);
  }

  #authenticate(headers, pathname) {
    const header = headers.authorization;
    if (!header) throw new ApiError(401, 10001, "Unable to authenticate request");
    const match = /^Bearer ([A-Za-z0-9_\-.]+)$/.exec(header);
    if (!match) throw new ApiError(400, 6003, "Invalid request headers: invalid format for Authorization header");
    if (match[1] !== this.token) throw new ApiError(403, 10000, "Authentication error");
    const account = /^\/client\/v4\/accounts\/([^/]+)/.exec(pathname)?.[1];
    if (account !== undefined && account !== this.accountId) throw new ApiError(403, 10000, "Authentication error");
  }

  #route(method, pathname) {
    const p = pathname.replace(/\/+$/, "").split("/").slice(1).map(decodeURIComponent);
    const is = (...parts) => parts.length === p.length && parts.every((x, i) => x === null || x === p[i]);
    const on = (endpoint, allowed, run) => {
      if (method !== allowed) throw new ApiError(405, 10405, `Method ${method} not allowed on this route`);
      return { endpoint, run };
    };
    if (is("client", "v4", "accounts", null, "d1", "database")) {
      return method === "POST" ? on("d1.create", "POST", (r) => this.#create(r)) : on("d1.list", "GET", (r) => this.#list(r));
    }
    if (is("client", "v4", "accounts", null, "d1", "database", null)) {
      const id = p[6];
      return method === "DELETE"
        ? on("d1.delete", "DELETE", () => this.#delete(id))
        : on("d1.get", "GET", () => this.#get(id));
    }
    if (is("client", "v4", "accounts", null, "d1", "database", null, null) && ["query", "raw", "export", "import"].includes(p[7])) {
      const id = p[6];
      const op = p[7];
      const run = { export: this.#export, import: this.#import }[op];
      return on(`d1.${op}`, "POST", (r) => (run ? run.call(this, id, r) : this.#query(id, op, r)));
    }
    if (is("client", "v4", "accounts", null, "workers", "scripts", null, "settings")) {
      const script = p[6];
      return method === "PATCH"
        ? on("scripts.settings.patch", "PATCH", (r) => this.#patchSettings(script, r))
        : on("scripts.settings.get", "GET", () => this.#getSettings(script));
    }
    throw new ApiError(404, 7003, `Could not route to ${pathname}, perhaps your object identifier is invalid?`);
  }

  // --- D1 -----------------------------------------------------------------------------------

  #database(idOrName) {
    const db = this.state.database(idOrName);
    if (!db) throw new ApiError(404, 7404, `The database ${idOrName} could not be found`);
    return db;
  }

  async #create({ body }) {
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
    return { result: db };
  }

  #list({ url }) {
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

  async #get(idOrName) {
    const db = this.#database(idOrName);
    await this.#refreshStats(db);
    return { result: db };
  }

  /** Reads `num_tables` and `file_size` from the database itself, as the real API reports them. */
  async #refreshStats(db) {
    const out = await this.runtime.d1(db.uuid, "query", [
      { sql: "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_cf_%'" },
    ]);
    if (out.ok) {
      db.num_tables = out.results[0].results[0].n;
      db.file_size = out.results[0].meta.size_after ?? db.file_size;
    }
  }

  async #delete(idOrName) {
    const db = this.#database(idOrName);
    // Wipe the data first: Miniflare keeps a database's file even when nothing binds it.
    const objects = await this.runtime.d1(db.uuid, "query", [
      { sql: "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_cf_%'" },
    ]);
    if (!objects.ok) throw new ApiError(500, 7500, "Internal error");
    const drops = objects.results[0].results.map((o) => ({ sql: `DROP ${o.type.toUpperCase()} IF EXISTS "${o.name.replaceAll('"', '""')}"` }));
    if (drops.length) {
      const dropped = await this.runtime.d1(db.uuid, "query", [{ sql: "PRAGMA defer_foreign_keys = on" }, ...drops]);
      if (!dropped.ok) throw new ApiError(500, 7500, "Internal error");
    }
    delete this.state.data.databases[db.uuid];
    this.runtime.retire(db.uuid);
    await this.state.save();
    return { result: null };
  }

  /** `/query` and `/raw`: one statement, several `;`-separated ones, or a `batch`. */
  async #query(idOrName, op, { body }) {
    const db = this.#database(idOrName);
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
    if (statements.some((st) => /^\s*(CREATE|DROP|ALTER)\b/i.test(st.sql))) await this.#refreshStats(db);
    return { result: out.results.map((r) => ({ results: r.results, success: true, meta: r.meta })) };
  }

  /** `/export` with the polling protocol wrangler uses. */
  async #export(idOrName, { body }) {
    const db = this.#database(idOrName);
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
      return { result: { success: true, type: "export", at_bookmark: bookmark, status: "active", messages: ["Generating SQL dump"], error: "" } };
    }
    const job = this.exports.get(input.current_bookmark);
    if (!job) {
      return { result: { success: true, type: "export", at_bookmark: input.current_bookmark, status: "error", messages: [], error: "Unknown or expired export bookmark" } };
    }
    const signed_url = `${this.url}/__cloud/exports/${job.token}/${encodeURIComponent(job.filename)}`;
    return {
      result: {
        success: true, type: "export", at_bookmark: input.current_bookmark, status: "complete",
        messages: ["Uploaded part 1"], error: "", result: { filename: job.filename, signed_url },
      },
    };
  }

  /**
   * `/import`, the protocol of `wrangler d1 execute --remote --file`: `init` (with the file's MD5
   * as `etag`) answers an upload URL; the client PUTs the file there (answered with the MD5 as
   * `ETag`); `ingest` runs it, all statements in one transaction (a failing file changes nothing);
   * `poll` reports the outcome.
   */
  async #import(idOrName, { body }) {
    const db = this.#database(idOrName);
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
        return answer({ filename, upload_url: `${this.url}/__cloud/uploads/${token}` });
      }
      case "ingest": {
        const upload = [...this.uploads.values()].find((u) => u.db === db.uuid && u.filename === input.filename && u.sql !== null);
        if (!upload) return answer({ success: false, status: "error", error: "Unknown upload: call init and upload the file first" });
        if (upload.etag !== input.etag || upload.md5 !== input.etag) return answer({ success: false, status: "error", error: "The etag does not match the uploaded file" });
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
            await this.#refreshStats(db);
            await this.state.save();
            const sum = (k) => out.results.reduce((n, r) => n + (r.meta?.[k] ?? 0), 0);
            this.imports.set(bookmark, {
              status: "complete",
              result: {
                success: true, num_queries: statements.length, final_bookmark: bookmark,
                meta: {
                  served_by: "tenantry-local-cloud", duration: performance.now() - started, changes: sum("changes"),
                  last_row_id: out.results.at(-1)?.meta?.last_row_id ?? 0, changed_db: sum("changes") > 0,
                  size_after: db.file_size, rows_read: sum("rows_read"), rows_written: sum("rows_written"),
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
        if (job.status === "error") return answer({ success: false, status: "error", error: job.error, errors: [job.error], at_bookmark: input.current_bookmark });
        return answer({ status: "complete", at_bookmark: input.current_bookmark, result: job.result, messages: ["Import complete"] });
      }
      default:
        throw malformed("action must be init, ingest or poll");
    }
  }

  // --- Worker script settings -------------------------------------------------------------

  #getSettings(scriptName) {
    const script = this.state.data.scripts[scriptName];
    if (!script) throw new ApiError(404, 10007, "This Worker does not exist on your account.");
    return { result: publicSettings(script) };
  }

  async #patchSettings(scriptName, { headers, body }) {
    const current = this.state.data.scripts[scriptName];
    if (!current) throw new ApiError(404, 10007, "This Worker does not exist on your account.");
    const form = await parseMultipart(headers, body);
    const part = form.get("settings");
    if (part === null) throw malformed("multipart part `settings` is required");
    const settings = parseJson(typeof part === "string" ? part : await part.text());
    if (typeof settings !== "object" || settings === null) throw malformed("settings must be a JSON object");
    if (settings.bindings !== undefined) {
      current.bindings = this.#resolveBindings(settings.bindings, current.bindings);
    }
    current.modified_on = new Date().toISOString();
    await this.state.save();
    // Like a new Worker version: live for new requests shortly, in-flight ones finish first.
    this.runtime.requestRestart(`settings of ${scriptName} changed`);
    return { result: publicSettings(current) };
  }

  /** Full replacement: `next` becomes the whole binding set; a binding sent without its value inherits it. */
  #resolveBindings(next, previous) {
    if (!Array.isArray(next)) throw new ApiError(400, 10021, "bindings must be an array");
    const byName = new Map(previous.map((b) => [b.name, b]));
    const seen = new Set();
    return next.map((b) => {
      if (typeof b?.name !== "string" || !BINDING_NAME.test(b.name)) {
        throw new ApiError(400, 10021, `binding name ${JSON.stringify(b?.name)} is not a valid JavaScript identifier`);
      }
      if (seen.has(b.name)) throw new ApiError(400, 10021, `binding name '${b.name}' is used more than once`);
      seen.add(b.name);
      const old = byName.get(b.name);
      const valueField = BINDING_VALUE[b.type];
      if (b.type === "inherit" || (valueField && !(valueField in b) && !(b.type === "d1" && "database_id" in b))) {
        if (!old) throw new ApiError(400, 10021, `binding '${b.name}' cannot inherit: the current version has no such binding`);
        if (b.type !== "inherit" && old.type !== b.type) {
          throw new ApiError(400, 10021, `binding '${b.name}' cannot inherit: it is a ${old.type} binding, not ${b.type}`);
        }
        return old;
      }
      if (!valueField) throw new ApiError(400, 10021, `binding type ${JSON.stringify(b.type)} is not supported by the local cloud`);
      if (b.type === "d1") {
        const id = b.id ?? b.database_id;
        if (typeof id !== "string" || !this.state.data.databases[id]) {
          throw new ApiError(400, 10021, `binding '${b.name}' refers to D1 database ${JSON.stringify(id)}, which does not exist`);
        }
        return { type: "d1", name: b.name, id };
      }
      if (b.type === "r2_bucket" && (typeof b.bucket_name !== "string" || !/^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$/.test(b.bucket_name))) {
        throw new ApiError(400, 10021, `binding '${b.name}' needs a valid bucket_name`);
      }
      if ((b.type === "plain_text" || b.type === "secret_text") && typeof b.text !== "string") {
        throw new ApiError(400, 10021, `binding '${b.name}' needs a string text`);
      }
      return { type: b.type, name: b.name, [valueField]: b[valueField] };
    });
  }

  // --- the local cloud's own control API (not part of Cloudflare's) --------------------------

  async #control(method, url, headers, body) {
    const exp = /^\/__cloud\/exports\/([0-9a-f]+)\/[^/]+$/.exec(url.pathname);
    if (exp && method === "GET") {
      // Like a presigned URL: the token in the path is the credential.
      const job = [...this.exports.values()].find((j) => j.token === exp[1] && j.expires > Date.now());
      if (!job) return { status: 404, contentType: "text/plain", body: "export not found or expired" };
      return { status: 200, contentType: "application/sql", body: job.sql };
    }
    const up = /^\/__cloud\/uploads\/([0-9a-f]+)$/.exec(url.pathname);
    if (up && method === "PUT") {
      // Like a presigned upload URL: the token is the credential; the answer's ETag is the MD5.
      const upload = this.uploads.get(up[1]);
      if (!upload || upload.expires < Date.now()) return { status: 404, contentType: "text/plain", body: "upload not found or expired" };
      const md5 = createHash("md5").update(body).digest("hex");
      upload.sql = body.toString("utf8");
      upload.md5 = md5;
      return { status: 200, contentType: "text/plain", headers: { etag: `"${md5}"` }, body: "" };
    }
    this.#authenticate(headers, url.pathname);
    if (url.pathname === "/__cloud/faults") {
      if (method === "GET") return envelope({ result: { rules: this.faults.rules, hits: this.faults.hits } });
      if (method === "DELETE") {
        this.faults.clear();
        return envelope({ result: { rules: [] } });
      }
      if (method === "POST") {
        const input = parseJson(body);
        if (input?.seed !== undefined) this.faults.setSeed(Number(input.seed));
        const error = this.faults.add(input?.rules ?? []);
        if (error) throw malformed(error);
        return envelope({ result: { rules: this.faults.rules } });
      }
    }
    if (url.pathname === "/__cloud/scheduled" && method === "POST") {
      // What Cloudflare's cron trigger does: run the Worker's scheduled handler once.
      const outcome = await this.runtime.scheduled(url.searchParams.get("cron") ?? "*/5 * * * *");
      return envelope({ result: outcome });
    }
    if (url.pathname === "/__cloud/stats" && method === "GET") {
      return envelope({ result: { requests: this.requests, restarts: this.runtime.restarts, databases: this.state.databases().length } });
    }
    throw new ApiError(404, 7003, `Could not route to ${url.pathname}`);
  }
}

// --- helpers --------------------------------------------------------------------------------

function envelope({ result, result_info, status = 200 }) {
  return { status, body: { success: true, errors: [], messages: [], result, ...(result_info ? { result_info } : {}) } };
}

function failure(code, message) {
  return { success: false, errors: [{ code, message }], messages: [], result: null };
}

function publicSettings(script) {
  return {
    bindings: script.bindings.map((b) =>
      b.type === "secret_text" ? { type: b.type, name: b.name } : b.type === "d1" ? { ...b, database_id: b.id } : b,
    ),
    compatibility_date: script.compatibility_date,
    compatibility_flags: script.compatibility_flags ?? [],
    modified_on: script.modified_on,
    usage_model: "standard",
  };
}

function parseJson(body) {
  try {
    return JSON.parse(body.toString("utf8"));
  } catch {
    throw malformed("The request body is not valid JSON");
  }
}

async function parseMultipart(headers, body) {
  const type = headers["content-type"] ?? "";
  if (!type.startsWith("multipart/form-data")) throw malformed("settings must be sent as multipart/form-data");
  try {
    return await new Request("http://local/", { method: "POST", headers: { "content-type": type }, body }).formData();
  } catch {
    throw malformed("The multipart body could not be parsed");
  }
}

function intParam(url, name, fallback, min, max) {
  const raw = url.searchParams.get(name);
  if (raw === null) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw malformed(`${name} must be an integer from ${min} to ${max}`);
  return n;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on("data", (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new ApiError(413, 7400, "Request body too large"));
        req.destroy();
      } else chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
