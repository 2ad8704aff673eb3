// The local cloud: a stand-in for the part of the Cloudflare REST API tenantry calls (D1
// databases, Worker scripts and their settings, Workers for Platforms dispatch namespaces), on
// loopback, backed by Miniflare's real D1.
//
// Shapes follow the real API: every answer is an envelope
//   { success, errors: [{ code, message }], messages, result, result_info? }
// with the real status codes and error codes (7400 malformed, 7404 unknown database, 7500 SQL
// error, 7502 name taken, 7406 database limit, 971 rate limited, 10000 authentication). Routes
// and behaviour are listed in the README ("The local cloud").

import http from "node:http";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { D1 } from "./d1.mjs";
import { Faults } from "./faults.mjs";
import { ApiError, envelope, failure, malformed, parseJson } from "./http.mjs";
import { R2_OPS, r2FaultAnswer } from "./r2-plugin.mjs";
import { R2 } from "./r2.mjs";
import { NotDeployed } from "./runtime.mjs";
import { TimeTravel } from "./timetravel.mjs";
import { Workers } from "./workers.mjs";

// Script uploads carry the wasm: the real limit is 10 MB compressed on the paid plan.
const MAX_BODY = 64 * 1024 * 1024;
// A D1 import's file goes to a presigned URL (5 GB on Cloudflare). Here the file is held as one
// JavaScript string to be split into statements, and V8 caps a string at about 512 MiB.
const MAX_IMPORT_BODY = 500 * 1024 * 1024;

export class LocalCloud {
  /**
   * @param {object} opts
   * @param {import("./state.mjs").State} opts.state
   * @param {import("./runtime.mjs").Runtime} opts.runtime
   * @param {string} opts.token the API token clients must send as `Authorization: Bearer ...`
   * @param {string} opts.accountId
   * @param {number} [opts.maxDatabases] databases per account (50 000 on the paid plan)
   * @param {number} [opts.maxBindings] D1 bindings per script (5 000: Cloudflare's 1 MB of metadata)
   * @param {number} [opts.timeTravelIntervalMs] how often Time Travel's detector looks for
   *   changed databases (see timetravel.mjs); 0: never (history only at create, bookmark calls
   *   and restores)
   * @param {(msg: string) => void} [opts.log]
   */
  constructor({ state, runtime, token, accountId, maxDatabases = 50_000, maxBindings, timeTravelIntervalMs = 200, log = () => {} }) {
    this.state = state;
    this.runtime = runtime;
    this.token = token;
    this.accountId = accountId;
    this.log = log;
    this.faults = new Faults();
    this.timeTravel = new TimeTravel({
      dir: path.join(path.dirname(state.file), "time-travel"),
      d1Dir: path.join(runtime.persistPath, "d1", "miniflare-D1DatabaseObject"),
      d1: (id, mode, statements) => runtime.d1(id, mode, statements),
      databases: () => state.databases().map((d) => d.uuid),
      intervalMs: timeTravelIntervalMs,
      log,
    });
    this.d1 = new D1({ state, runtime, maxDatabases, baseUrl: () => this.url, timeTravel: this.timeTravel, log });
    this.r2 = new R2({ state });
    this.workers = new Workers({
      state,
      runtime,
      blobDir: path.join(path.dirname(state.file), "modules"),
      subdomain: "tenantry-local",
      maxBindings,
      // Every script's R2 bindings ask the local cloud whether to fail (once it listens).
      r2Faults: () => (this.url ? { url: `${this.url}/__cloud/r2-faults`, token } : null),
      log,
    });
    /** @type {Record<string, number>} endpoint -> count, for tests and benchmarks */
    this.requests = {};
    this.server = http.createServer((req, res) => this.#serve(req, res));
    /** @type {string | null} */
    this.url = null;
  }

  async listen(port = 0, host = "127.0.0.1") {
    await new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(port, host, () => resolve(undefined));
    });
    this.url = `http://${host}:${/** @type {import("node:net").AddressInfo} */ (this.server.address()).port}`;
    return this.url;
  }

  async close() {
    this.server.closeAllConnections?.();
    await new Promise((resolve) => this.server.close(resolve));
    await this.timeTravel.stop();
  }

  // ---------------------------------------------------------------------------------------------

  async #serve(req, res) {
    const url = new URL(req.url, "http://local");
    let answer;
    let fault = null;
    try {
      const body = await readBody(req, url.pathname.startsWith("/__cloud/uploads/") ? MAX_IMPORT_BODY : MAX_BODY);
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
    } catch (caught) {
      let e = caught;
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
      // As the real API and storage do: a download's length is known up front (R2 needs it to
      // take a streamed body).
      "content-length": Buffer.byteLength(text),
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
    const on = (endpoint, allowed, run) => {
      if (method !== allowed) throw new ApiError(405, 10405, `Method ${method} not allowed on this route`);
      return { endpoint, run };
    };
    // /client/v4/accounts/{account}/{family}/...
    const found =
      p[0] === "client" && p[1] === "v4" && p[2] === "accounts" && p.length > 4
        ? p[4] === "d1" && p[5] === "database"
          ? this.d1.route(method, p.slice(6), on)
          : p[4] === "storage" && p[5] === "kv" && p[6] === "namespaces" && p.length === 7
            ? // No KV namespaces exist here (`wrangler delete` lists them to clean up Workers Sites).
              on("kv.namespaces.list", "GET", () => ({ result: [], result_info: { page: 1, per_page: 100, count: 0, total_count: 0 } }))
            : p[4] === "r2" && p[5] === "buckets"
              ? this.r2.route(method, p.slice(6), on)
              : p[4] === "workers"
                ? this.workers.route(method, p.slice(5), on)
                : null
        : null;
    if (!found) throw new ApiError(404, 7003, `Could not route to ${pathname}, perhaps your object identifier is invalid?`);
    return found;
  }

  // --- the local cloud's own control API (not part of Cloudflare's) --------------------------

  async #control(method, url, headers, body) {
    const transfer = this.d1.transfer(method, url.pathname, body);
    if (transfer) return transfer;
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
    if (url.pathname === "/__cloud/r2-faults" && method === "GET") {
      // Asked by the scripts' R2 bindings before each operation (see r2-plugin.mjs).
      const op = url.searchParams.get("op") ?? "";
      if (!R2_OPS.includes(op)) throw malformed(`op must be one of ${R2_OPS.join(", ")}`);
      const endpoint = `r2.${op}`;
      this.requests[endpoint] = (this.requests[endpoint] ?? 0) + 1;
      const fault = this.faults.pick(endpoint);
      if (fault) this.log(`fault ${fault.kind} on ${endpoint} (${url.searchParams.get("bucket")}/${url.searchParams.get("key") ?? ""})`);
      return envelope({ result: await r2FaultAnswer(op, fault) });
    }
    if (url.pathname === "/__cloud/scheduled" && method === "POST") {
      // What Cloudflare's cron trigger does: run the Worker's scheduled handler once.
      const script = url.searchParams.get("script") ?? this.runtime.entry;
      const outcome = await this.runtime.scheduled(url.searchParams.get("cron") ?? "*/5 * * * *", script).catch((e) => {
        throw e instanceof NotDeployed ? new ApiError(404, 10007, e.message) : e;
      });
      return envelope({ result: outcome });
    }
    if (url.pathname === "/__cloud/stats" && method === "GET") {
      return envelope({ result: { requests: this.requests, restarts: this.runtime.restarts, databases: this.state.databases().length } });
    }
    throw new ApiError(404, 7003, `Could not route to ${url.pathname}`);
  }
}

// --- helpers --------------------------------------------------------------------------------

/** @param {http.IncomingMessage} req @param {number} limit */
function readBody(req, limit) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on("data", (c) => {
      size += c.length;
      if (size > limit) {
        reject(new ApiError(413, 7400, "Request body too large"));
        req.destroy();
      } else chunks.push(c);
    });
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}
