// The whole local stack in one call: the tenantry Worker (wasm, in workerd through Miniflare), its
// control-plane D1 (created through the local cloud and migrated with the real wrangler CLI), the
// local cloud, and a front door on `http://<slug>.localhost:<port>`.
//
// `npm run dev` and the end-to-end tests both start it through `startStack`.

import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { LocalCloud } from "./api.mjs";
import { NotDeployed, Runtime } from "./runtime.mjs";
import { State } from "./state.mjs";
import { deploy } from "../scripts/deploy.mjs";
import { runWrangler } from "../scripts/lib/wrangler.mjs";
import { bindingOptions } from "./workers.mjs";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const SCRIPT_NAME = "tenantry";
export const LOCAL_ACCOUNT_ID = "0123456789abcdef0123456789abcdef";
export const LOCAL_TOKEN = "tenantry-local-cloud-token";
/** The admin API's bearer token in the local stack (a secret on a real deployment). */
export const LOCAL_ADMIN_TOKEN = "tenantry-local-admin-token";
/** The JWT master key in the local stack, `kid:secret` (a secret on a real deployment). */
export const LOCAL_JWT_KEY = "local-1:tenantry-local-jwt-master-secret-0123456789";
const D1_NAME_PREFIX = "tenantry-";
const CONTROL_DB_NAME = `${D1_NAME_PREFIX}control`;
const HOP_BY_HOP = ["connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host", "upgrade"];

/** The binding hosts' dispatch namespace (wrangler.toml's HOSTS_NAMESPACE). */
export const HOSTS_NAMESPACE = /^HOSTS_NAMESPACE\s*=\s*"([^"]*)"/m.exec(readFileSync(path.join(ROOT, "wrangler.toml"), "utf8"))?.[1] ?? "";

/** The compatibility date in wrangler.toml, so local and deployed Workers run the same runtime. */
export function compatibilityDate() {
  const toml = readFileSync(path.join(ROOT, "wrangler.toml"), "utf8");
  const m = /^compatibility_date\s*=\s*"([0-9-]+)"/m.exec(toml);
  if (!m) throw new Error("wrangler.toml has no compatibility_date");
  return m[1];
}

/**
 * The local cloud alone: its registry and D1 data in `stateDir`, workerd running whatever is
 * deployed there (`entry` first: the script `runtime.dispatch` reaches), and the Cloudflare API
 * stand-in listening. Nothing is created or deployed. `startStack` builds on it; tests of the
 * local cloud itself can start one of their own.
 * @param {object} opts
 * @param {string} opts.stateDir
 * @param {number} [opts.cloudPort] the local cloud's port (0: any free port)
 * @param {number} [opts.poolSize] spare databases kept bound (see runtime.mjs)
 * @param {number} [opts.maxBindingsPerScript] D1 bindings a script may hold (default 5,000, the
 *   documented limit): an upload or settings change past it is refused with 400/10021
 * @param {string} [opts.entry] the script the front door sends requests to
 * @param {(name: string) => object} [opts.extra] more Miniflare options for account script `name`
 * @param {() => object[]} [opts.extraWorkers] more Workers on the same workerd (see runtime.mjs)
 * @param {number} [opts.inspectorPort] open workerd's V8 inspector (see runtime.mjs)
 * @param {number} [opts.timeTravelIntervalMs] D1 Time Travel's change detector period (default
 *   200 ms; 0: off, see cloud/timetravel.mjs)
 * @param {(msg: string) => void} [opts.log]
 */
export async function startCloud({
  stateDir,
  cloudPort = 0,
  poolSize,
  maxBindingsPerScript,
  entry = SCRIPT_NAME,
  extra = () => ({}),
  extraWorkers,
  inspectorPort,
  timeTravelIntervalMs,
  log = () => {},
}) {
  await mkdir(stateDir, { recursive: true });
  const state = await new State(path.join(stateDir, "cloud.json")).load();
  /** @type {LocalCloud} */
  let cloud;
  const runtime = new Runtime({
    persistPath: path.join(stateDir, "persist"),
    poolSize,
    log,
    entry,
    // What serves is what was deployed: the deployed version of every script in the account.
    workers: () => cloud.workers.miniflareWorkers(entry, extra),
    extraWorkers,
    inspectorPort,
  });
  cloud = new LocalCloud({
    state,
    runtime,
    token: LOCAL_TOKEN,
    accountId: LOCAL_ACCOUNT_ID,
    maxBindings: maxBindingsPerScript,
    timeTravelIntervalMs,
    log,
  });
  // Listening first: the Workers' R2 bindings are given the local cloud's address.
  await listenOrExplain(() => cloud.listen(cloudPort), cloudPort, "CLOUD_PORT");
  try {
    await runtime.start(state.databases().map((d) => d.uuid));
  } catch (e) {
    await cloud.close();
    throw e;
  }
  cloud.timeTravel.start();
  return {
    state,
    runtime,
    cloud,
    cloudUrl: cloud.url,
    apiBase: `${cloud.url}/client/v4`,
    api: apiClient(cloud.url),
    async stop() {
      await cloud.close();
      await runtime.dispose();
    },
  };
}

/**
 * @param {object} opts
 * @param {string} opts.stateDir where the local cloud keeps its registry and D1 data
 * @param {number} [opts.port] the Worker's port (0: any free port)
 * @param {number} [opts.cloudPort] the local cloud's port (0: any free port)
 * @param {number} [opts.poolSize] spare databases kept bound (see runtime.mjs)
 * @param {"report"|"remove"} [opts.orphanPolicy] what the reconciler does with orphan databases
 * @param {(msg: string) => void} [opts.log]
 * @param {boolean} [opts.directSocket] also give the tenantry Worker its own socket on workerd
 *   (`runtime.directUrl("tenantry")`), for load that must not pass through Node
 * @param {() => object[]} [opts.extraWorkers] more Workers on the same workerd (see runtime.mjs)
 * @param {number} [opts.inspectorPort] open workerd's V8 inspector (see runtime.mjs)
 * @param {boolean} [opts.cron] fire the deployed scripts' cron triggers on time (`npm run dev`;
 *   the tests fire them by hand: `POST /__cloud/scheduled`)
 * @param {number} [opts.maxBindingsPerScript] D1 bindings a script may hold (see `startCloud`)
 * @param {number} [opts.hostCapacity] tenant bindings per binding host (the Worker's
 *   HOST_CAPACITY; default: wrangler.toml's)
 * @param {string} [opts.hostsNamespace] the Worker's HOSTS_NAMESPACE (default: wrangler.toml's;
 *   `""`: the single-script layout, every tenant binding on the main Worker)
 * @param {number} [opts.timeTravelIntervalMs] see `startCloud`
 */
export async function startStack({
  stateDir,
  port = 0,
  cloudPort = 0,
  poolSize,
  orphanPolicy = "report",
  log = () => {},
  directSocket = false,
  extraWorkers,
  inspectorPort,
  cron = false,
  maxBindingsPerScript,
  hostCapacity,
  hostsNamespace,
  timeTravelIntervalMs,
}) {
  const { state, runtime, cloud, api } = await startCloud({
    stateDir,
    cloudPort,
    poolSize,
    maxBindingsPerScript,
    entry: SCRIPT_NAME,
    extra: (name) => (name === SCRIPT_NAME && directSocket ? { unsafeDirectSockets: [{ host: "127.0.0.1", port: 0 }] } : {}),
    extraWorkers,
    inspectorPort,
    timeTravelIntervalMs,
    log,
  });

  let control = state.databases().find((d) => d.name === CONTROL_DB_NAME);
  if (!control) control = (await api("POST", "/d1/database", { name: CONTROL_DB_NAME })).result;
  // The backups bucket, as a user creates it once (`wrangler r2 bucket create tenantry-backups`).
  if (!state.data.buckets["tenantry-backups"]) await api("POST", "/r2/buckets", { name: "tenantry-backups" });
  await applyControlMigrations({ stateDir, cloudUrl: cloud.url, controlId: control.uuid, log });
  const front = await listenOrExplain(() => frontDoor(runtime, port), port, "PORT");
  const url = `http://localhost:${front.address().port}`;

  // Where `npm run deploy -- --target` sends the Worker: this local cloud, with the vars and
  // secrets a local deployment needs in place of wrangler.toml's placeholders.
  /** @type {import("../scripts/deploy.mjs").Target} */
  const target = {
    env: { CLOUDFLARE_API_BASE_URL: `${cloud.url}/client/v4`, CLOUDFLARE_API_TOKEN: LOCAL_TOKEN, CLOUDFLARE_ACCOUNT_ID: LOCAL_ACCOUNT_ID },
    vars: {
      APEX: "localhost",
      CLOUDFLARE_API_BASE_URL: `${cloud.url}/client/v4`,
      CLOUDFLARE_ACCOUNT_ID: LOCAL_ACCOUNT_ID,
      ORPHAN_POLICY: orphanPolicy,
      ...(hostCapacity ? { HOST_CAPACITY: String(hostCapacity) } : {}),
      ...(hostsNamespace === undefined ? {} : { HOSTS_NAMESPACE: hostsNamespace }),
    },
    control_database_id: control.uuid,
    secrets: { CLOUDFLARE_API_TOKEN: LOCAL_TOKEN, ADMIN_TOKEN: LOCAL_ADMIN_TOKEN, JWT_SIGNING_KEY: LOCAL_JWT_KEY },
    build: false,
    url,
    admin_token: LOCAL_ADMIN_TOKEN,
    work_dir: stateDir,
  };
  const targetFile = path.join(stateDir, "target.json");
  await writeFile(targetFile, JSON.stringify(target, null, 2), { mode: 0o600 });

  /**
   * Deploys build/ with the real `wrangler deploy` (through scripts/deploy.mjs, the production
   * path) unless this build with these settings is what serves already. Resolves once the new
   * version serves. `migrate`: apply new control-plane migrations first (edit-reload).
   */
  async function deployBuild({ force = false, message = "npm run dev", migrate = false } = {}) {
    // A new control-plane migration first, so the new code finds its tables.
    if (migrate) await applyControlMigrations({ stateDir, cloudUrl: cloud.url, controlId: control.uuid, log });
    const fingerprint = await buildFingerprint(target);
    const recordFile = path.join(stateDir, "deployed.json");
    const record = JSON.parse(await readFile(recordFile, "utf8").catch(() => "{}"));
    const serving = cloud.workers.deployedVersion(SCRIPT_NAME);
    if (!force && serving && record.fingerprint === fingerprint && record.etag === serving.etag) return null;
    const started = performance.now();
    const versionId = await deploy({ target, message, log: (m) => log(`[deploy] ${m}`) });
    await runtime.settled(); // the deployment asked for a restart: wait until it serves
    const deployed = cloud.workers.deployedVersion(SCRIPT_NAME);
    await writeFile(recordFile, JSON.stringify({ fingerprint, etag: deployed?.etag, version: versionId }));
    log(`deployed the Worker with wrangler deploy in ${Math.round(performance.now() - started)} ms`);
    return versionId;
  }
  await deployBuild();
  const stopSchedules = cron ? cloud.workers.startSchedules() : () => {};

  return {
    url,
    cloudUrl: cloud.url,
    apiBase: `${cloud.url}/client/v4`,
    token: LOCAL_TOKEN,
    adminToken: LOCAL_ADMIN_TOKEN,
    jwtKey: LOCAL_JWT_KEY,
    accountId: LOCAL_ACCOUNT_ID,
    controlDatabase: control,
    /** The deploy target file (`npm run deploy -- --target <file>`). */
    targetFile,
    target,
    cloud,
    runtime,
    state,
    api,
    deployBuild,
    /** The URL of tenant `slug`'s API. */
    tenantUrl: (slug) => `http://${slug}.localhost:${front.address().port}`,
    /**
     * Crashes the stack: workerd is killed mid-flight (see `Runtime.kill`), then the front door and
     * the local cloud close. The state directory keeps what was written; start a new stack on it
     * to restart.
     */
    async crash() {
      stopSchedules();
      await runtime.kill();
      front.closeAllConnections?.();
      await new Promise((resolve) => front.close(resolve));
      await cloud.close();
      await state.save();
    },
    async stop() {
      stopSchedules();
      front.closeAllConnections?.();
      await new Promise((resolve) => front.close(resolve));
      await cloud.close();
      await runtime.dispose();
    },
  };
}

/** What a deploy of build/ with `target` would upload: the build's bytes, the config, the target. */
async function buildFingerprint(target) {
  const hash = createHash("sha256");
  for (const f of ["index.js", "index_bg.wasm"]) hash.update(await readFile(path.join(ROOT, "build", f)));
  hash.update(await readFile(path.join(ROOT, "wrangler.toml")));
  hash.update(JSON.stringify({ ...target, url: undefined }));
  return hash.digest("hex");
}

/** Starts a server, turning "port in use" into a sentence that says what to do. */
async function listenOrExplain(listen, port, variable) {
  try {
    return await listen();
  } catch (e) {
    if (e.code === "EADDRINUSE") {
      throw new Error(
        `port ${port} is in use (another npm run dev?): stop what uses it, or pick another port, e.g. ${variable}=${port + 10} npm run dev`,
        { cause: e },
      );
    }
    throw e;
  }
}

/** Miniflare options of the tenantry Worker built in `buildDir` with the bindings `settings.bindings`. */
export function workerOptions(settings, buildDir, date) {
  return { name: SCRIPT_NAME, ...workerBuild(buildDir), compatibilityDate: date, ...bindingOptions(settings.bindings) };
}

/** The modules of a workers-rs build (worker-build's output in `buildDir`), as Miniflare options. */
export function workerBuild(buildDir) {
  return {
    modulesRoot: buildDir,
    modules: [
      { type: "ESModule", path: path.join(buildDir, "index.js") },
      { type: "CompiledWasm", path: path.join(buildDir, "index_bg.wasm") },
    ],
  };
}

/**
 * Uploads a one-module Worker (`index.js` = `source`) with a multipart PUT to `route` (below
 * `/accounts/{account}`: an account script or a dispatch namespace's) of the local cloud at
 * `cloudUrl`, as wrangler does; answers `{ status, body }`.
 * @param {string} cloudUrl
 * @param {string} route
 * @param {string} source
 * @param {{ bindings?: object[], compatibilityDate?: string, metadata?: object }} [opts]
 */
export async function uploadScript(cloudUrl, route, source, { bindings = [], compatibilityDate = "2025-06-01", metadata = {} } = {}) {
  const form = new FormData();
  const meta = { main_module: "index.js", compatibility_date: compatibilityDate, bindings, ...metadata };
  form.set("metadata", new Blob([JSON.stringify(meta)], { type: "application/json" }));
  form.set("index.js", new Blob([source], { type: "application/javascript+module" }), "index.js");
  const res = await fetch(`${cloudUrl}/client/v4/accounts/${LOCAL_ACCOUNT_ID}${route}`, {
    method: "PUT",
    headers: { authorization: `Bearer ${LOCAL_TOKEN}` },
    body: form,
  });
  return { status: res.status, body: /** @type {any} */ (await res.json()) };
}

/** A failed call of the local cloud's API: the HTTP status and the envelope's errors. */
export class CloudApiError extends Error {
  /**
   * @param {string} message
   * @param {number} status
   * @param {{ code: number, message: string }[]} errors
   */
  constructor(message, status, errors) {
    super(message);
    this.status = status;
    this.errors = errors;
  }
}

/**
 * A client of the local cloud's Cloudflare API, for the stack itself and for tests. A call
 * resolves with the envelope (`any`: the API's JSON), throws on `success: false` (the error has
 * `status` and `errors`), or resolves with the raw `Response` when `raw` is set.
 * @param {string} cloudUrl
 * @param {{ token?: string, accountId?: string }} [opts]
 * @returns {(method: string, route: string, body?: unknown, opts?: { multipart?: boolean, raw?: boolean }) => Promise<any>}
 */
export function apiClient(cloudUrl, { token = LOCAL_TOKEN, accountId = LOCAL_ACCOUNT_ID } = {}) {
  return async (method, route, body, { multipart = false, raw = false } = {}) => {
    const headers = { authorization: `Bearer ${token}` };
    let payload;
    if (multipart) {
      payload = new FormData();
      payload.set("settings", new Blob([JSON.stringify(body)], { type: "application/json" }));
    } else if (body !== undefined) {
      headers["content-type"] = "application/json";
      payload = JSON.stringify(body);
    }
    const response = await fetch(`${cloudUrl}/client/v4/accounts/${accountId}${route}`, { method, headers, body: payload });
    if (raw) return response;
    const json = /** @type {any} */ (await response.json());
    if (!json.success)
      throw new CloudApiError(`${method} ${route}: ${response.status} ${JSON.stringify(json.errors)}`, response.status, json.errors);
    return json;
  };
}

/** Runs `wrangler d1 migrations apply <control> --remote` against the local cloud. */
async function applyControlMigrations({ stateDir, cloudUrl, controlId, log }) {
  await mkdir(stateDir, { recursive: true });
  const config = path.join(stateDir, "wrangler.control.json");
  await writeFile(
    config,
    JSON.stringify(
      {
        name: SCRIPT_NAME,
        compatibility_date: compatibilityDate(),
        d1_databases: [
          {
            binding: "CONTROL_DB",
            database_name: CONTROL_DB_NAME,
            database_id: controlId,
            migrations_dir: path.relative(stateDir, path.join(ROOT, "migrations", "control")),
          },
        ],
      },
      null,
      2,
    ),
  );
  const out = await wrangler(["d1", "migrations", "apply", CONTROL_DB_NAME, "--remote", "--config", config], cloudUrl);
  if (out.code !== 0) throw new Error(`wrangler d1 migrations apply failed (${out.code}):\n${out.stdout}\n${out.stderr}`);
  log(
    out.stdout
      .trim()
      .split("\n")
      .filter((l) => /✅|No migrations|applied/i.test(l))
      .join("\n"),
  );
}

/**
 * Runs the real wrangler CLI against the local cloud; resolves with its exit code and output.
 * @param {string[]} args
 * @param {string} cloudUrl
 * @param {{ token?: string, accountId?: string, cwd?: string, input?: string }} [opts]
 */
export function wrangler(args, cloudUrl, { token = LOCAL_TOKEN, accountId = LOCAL_ACCOUNT_ID, cwd = ROOT, input } = {}) {
  return runWrangler(args, {
    cwd,
    input,
    env: {
      CLOUDFLARE_API_BASE_URL: `${cloudUrl}/client/v4`,
      CLOUDFLARE_API_TOKEN: token,
      CLOUDFLARE_ACCOUNT_ID: accountId,
    },
  });
}

/** The Worker's public port: forwards to workerd, holding requests while it restarts. */
async function frontDoor(runtime, port) {
  const server = http.createServer(async (req, res) => {
    try {
      const chunks = [];
      for await (const c of req) chunks.push(c);
      const headers = Object.fromEntries(Object.entries(req.headers).filter(([k]) => !HOP_BY_HOP.includes(k)));
      // As Cloudflare's edge does: the client's address, whatever the client sent in its place.
      headers["cf-connecting-ip"] = (req.socket.remoteAddress ?? "unknown").replace(/^::ffff:/, "");
      const host = req.headers.host ?? "localhost";
      const body = chunks.length && !["GET", "HEAD"].includes(req.method) ? Buffer.concat(chunks) : undefined;
      const out = await runtime.dispatch(`http://${host}${req.url}`, { method: req.method, headers, body, redirect: "manual" });
      const outHeaders = {};
      out.headers.forEach((value, key) => {
        // mf-*: Miniflare's internal headers, not the Worker's.
        if (!HOP_BY_HOP.includes(key) && !key.startsWith("mf-")) outHeaders[key] = value;
      });
      res.writeHead(out.status, outHeaders);
      res.end(out.body);
    } catch (e) {
      if (e instanceof NotDeployed) {
        res.writeHead(503, { "content-type": "application/json", "retry-after": "5" });
        res.end(
          JSON.stringify({
            error: { code: "worker_not_deployed", message: `${e.message}: deploy it (npm run deploy -- --target <state>/target.json)` },
          }),
        );
        return;
      }
      res.writeHead(502, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { code: "local_gateway_error", message: String(e.message ?? e) } }));
    }
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve(undefined));
  });
  return server;
}
