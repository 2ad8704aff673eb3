// The whole local stack in one call: the tenantry Worker (wasm, in workerd through Miniflare), its
// control-plane D1 (created through the local cloud and migrated with the real wrangler CLI), the
// local cloud, and a front door on `http://<slug>.localhost:<port>`.
//
// `npm run dev` and the end-to-end tests both start it through `startStack`.

import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { LocalCloud } from "./api.mjs";
import { Runtime } from "./runtime.mjs";
import { State } from "./state.mjs";

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

/** The compatibility date in wrangler.toml, so local and deployed Workers run the same runtime. */
export function compatibilityDate() {
  const toml = readFileSync(path.join(ROOT, "wrangler.toml"), "utf8");
  const m = /^compatibility_date\s*=\s*"([0-9-]+)"/m.exec(toml);
  if (!m) throw new Error("wrangler.toml has no compatibility_date");
  return m[1];
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
}) {
  const date = compatibilityDate();
  const state = await new State(path.join(stateDir, "cloud.json")).load();
  const buildDir = path.join(ROOT, "build");
  let cloud;
  const runtime = new Runtime({
    persistPath: path.join(stateDir, "persist"),
    poolSize,
    log,
    workerOptions: () => ({
      ...workerOptions(cloud.script(SCRIPT_NAME), buildDir, date),
      ...(directSocket ? { unsafeDirectSockets: [{ host: "127.0.0.1", port: 0 }] } : {}),
    }),
    extraWorkers,
    inspectorPort,
  });
  cloud = new LocalCloud({ state, runtime, token: LOCAL_TOKEN, accountId: LOCAL_ACCOUNT_ID, log });
  await runtime.start(state.databases().map((d) => d.uuid));
  await cloud.listen(cloudPort);
  const api = apiClient(cloud.url);

  // "Deploy": the control-plane database and the Worker's own bindings, as `wrangler deploy`
  // would set them from wrangler.toml. Tenant bindings already there are kept.
  let control = state.databases().find((d) => d.name === CONTROL_DB_NAME);
  if (!control) control = (await api("POST", "/d1/database", { name: CONTROL_DB_NAME })).result;
  state.data.scripts[SCRIPT_NAME] ??= { bindings: [], compatibility_date: date, modified_on: new Date().toISOString() };
  const own = [
    { type: "plain_text", name: "APEX", text: "localhost" },
    { type: "plain_text", name: "D1_NAME_PREFIX", text: D1_NAME_PREFIX },
    { type: "d1", name: "CONTROL_DB", id: control.uuid },
    { type: "r2_bucket", name: "BACKUPS", bucket_name: "tenantry-backups" },
    { type: "plain_text", name: "CLOUDFLARE_API_BASE_URL", text: `${cloud.url}/client/v4` },
    { type: "plain_text", name: "CLOUDFLARE_ACCOUNT_ID", text: LOCAL_ACCOUNT_ID },
    { type: "plain_text", name: "WORKER_SCRIPT_NAME", text: SCRIPT_NAME },
    { type: "plain_text", name: "ORPHAN_POLICY", text: orphanPolicy },
    { type: "secret_text", name: "CLOUDFLARE_API_TOKEN", text: LOCAL_TOKEN },
    { type: "secret_text", name: "ADMIN_TOKEN", text: LOCAL_ADMIN_TOKEN },
    { type: "secret_text", name: "JWT_SIGNING_KEY", text: LOCAL_JWT_KEY },
  ];
  const current = cloud.script(SCRIPT_NAME).bindings;
  const unchanged = own.every((b) => current.some((c) => JSON.stringify(c) === JSON.stringify(b)));
  if (!unchanged) {
    const others = current.filter((c) => !own.some((b) => b.name === c.name)).map((c) => ({ type: "inherit", name: c.name }));
    await api("PATCH", `/workers/scripts/${SCRIPT_NAME}/settings`, { bindings: [...own, ...others] }, { multipart: true });
    await runtime.restart("deploy");
  }

  await applyControlMigrations({ stateDir, cloudUrl: cloud.url, controlId: control.uuid, log });
  const front = await frontDoor(runtime, port);
  const url = `http://localhost:${front.address().port}`;

  return {
    url,
    cloudUrl: cloud.url,
    apiBase: `${cloud.url}/client/v4`,
    token: LOCAL_TOKEN,
    adminToken: LOCAL_ADMIN_TOKEN,
    jwtKey: LOCAL_JWT_KEY,
    accountId: LOCAL_ACCOUNT_ID,
    controlDatabase: control,
    cloud,
    runtime,
    state,
    api,
    /** The URL of tenant `slug`'s API. */
    tenantUrl: (slug) => `http://${slug}.localhost:${front.address().port}`,
    /**
     * Crashes the stack: workerd is killed mid-flight (see `Runtime.kill`), then the front door and
     * the local cloud close. The state directory keeps what was written; start a new stack on it
     * to restart.
     */
    async crash() {
      await runtime.kill();
      front.closeAllConnections?.();
      await new Promise((resolve) => front.close(resolve));
      await cloud.close();
      await state.save();
    },
    async stop() {
      front.closeAllConnections?.();
      await new Promise((resolve) => front.close(resolve));
      await cloud.close();
      await runtime.dispose();
    },
  };
}

/** Miniflare options of the tenantry Worker with the bindings of script `settings`. */
export function workerOptions(settings, buildDir, date) {
  const d1Databases = {};
  const r2Buckets = {};
  const bindings = {};
  for (const b of settings.bindings) {
    if (b.type === "d1") d1Databases[b.name] = b.id;
    else if (b.type === "r2_bucket") r2Buckets[b.name] = b.bucket_name;
    else if (b.type === "json") bindings[b.name] = b.json;
    else bindings[b.name] = b.text;
  }
  return { name: SCRIPT_NAME, ...workerBuild(buildDir), compatibilityDate: date, d1Databases, r2Buckets, bindings };
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

/** A client of the local cloud's Cloudflare API, for the stack itself and for tests. */
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
    const json = await response.json();
    if (!json.success) {
      const error = new Error(`${method} ${route}: ${response.status} ${JSON.stringify(json.errors)}`);
      error.status = response.status;
      error.errors = json.errors;
      throw error;
    }
    return json;
  };
}

/** Runs `wrangler d1 migrations apply <control> --remote` against the local cloud. */
async function applyControlMigrations({ stateDir, cloudUrl, controlId, log }) {
  await mkdir(stateDir, { recursive: true });
  const config = path.join(stateDir, "wrangler.control.json");
  await writeFile(config, JSON.stringify({
    name: SCRIPT_NAME,
    compatibility_date: compatibilityDate(),
    d1_databases: [{
      binding: "CONTROL_DB",
      database_name: CONTROL_DB_NAME,
      database_id: controlId,
      migrations_dir: path.relative(stateDir, path.join(ROOT, "migrations", "control")),
    }],
  }, null, 2));
  const out = await wrangler(["d1", "migrations", "apply", CONTROL_DB_NAME, "--remote", "--config", config], cloudUrl);
  if (out.code !== 0) throw new Error(`wrangler d1 migrations apply failed (${out.code}):\n${out.stdout}\n${out.stderr}`);
  log(out.stdout.trim().split("\n").filter((l) => /✅|No migrations|applied/i.test(l)).join("\n"));
}

/** Runs the real wrangler CLI against the local cloud; resolves with its exit code and output. */
export function wrangler(args, cloudUrl, { token = LOCAL_TOKEN, accountId = LOCAL_ACCOUNT_ID, cwd = ROOT } = {}) {
  const bin = path.join(ROOT, "node_modules", "wrangler", "bin", "wrangler.js");
  // wrangler needs Node >= 22: the one `npm install` put in node_modules, whatever runs us.
  const node = path.join(ROOT, "node_modules", ".bin", "node");
  return new Promise((resolve, reject) => {
    const child = spawn(existsSync(node) ? node : process.execPath, [bin, ...args], {
      cwd,
      env: {
        ...process.env,
        CLOUDFLARE_API_BASE_URL: `${cloudUrl}/client/v4`,
        CLOUDFLARE_API_TOKEN: token,
        CLOUDFLARE_ACCOUNT_ID: accountId,
        WRANGLER_SEND_METRICS: "false",
        CI: "true",
        NO_COLOR: "1",
        FORCE_COLOR: "0",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => (stdout += d));
    child.stderr.on("data", (d) => (stderr += d));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

/** The Worker's public port: forwards to workerd, holding requests while it restarts. */
async function frontDoor(runtime, port) {
  const server = http.createServer(async (req, res) => {
    try {
      const chunks = [];
      for await (const c of req) chunks.push(c);
      const headers = Object.fromEntries(Object.entries(req.headers).filter(([k]) => !HOP_BY_HOP.includes(k)));
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
      res.writeHead(502, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { code: "local_gateway_error", message: String(e.message ?? e) } }));
    }
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", resolve);
  });
  return server;
}
