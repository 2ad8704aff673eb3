// The Workers scripts API of the local cloud: what `wrangler deploy`, `wrangler versions`,
// `wrangler deployments`, `wrangler rollback` and `wrangler secret` call, and what tenantry calls
// to change its bindings. Shapes and error codes follow the real API (cloudflare/workers-sdk's
// deploy helpers and the API schema); the README lists the routes.
//
// The model is the real one:
// - a script has versions (immutable: modules, bindings, compatibility settings) and deployments
//   (which version serves; newest first);
// - an upload (`PUT /scripts/{name}`) makes a version and deploys it; `POST .../versions` only
//   makes one; `POST .../deployments` deploys one;
// - a settings PATCH or a secret change makes a new version from the latest one and deploys it,
//   and is refused while the latest version is not the deployed one (10214, 10215);
// - only the last 100 versions are kept (and can be deployed).
// The runtime runs the deployed version of every script (see `miniflareWorkers`): what was
// uploaded is what serves.
//
// Scripts live in a *scope*: the account's, or one Workers for Platforms dispatch namespace's
// (cloud/dispatch.mjs says what was checked of that API). Both scopes share this file's upload,
// version, binding and settings machinery; a service binding names a script of the same scope.
// A script's upload or binding change is refused (10021) when it would hold more than
// `maxBindings` D1 bindings.

import { createHash, randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import path from "node:path";
import { Cron } from "croner";
import { Miniflare, convertV4MiniflareOptions } from "miniflare";
import pLimit from "p-limit";
import { Namespaces, namespaceInfo, namespaceWorkerName } from "./dispatch.mjs";
import { dispatchBinding } from "./dispatch-plugin.mjs";
import { ApiError, malformed, parseJson, parseMultipart } from "./http.mjs";
import { r2Binding } from "./r2-plugin.mjs";
import { BUCKET_NAME } from "./r2.mjs";
import { ratelimitBinding } from "./ratelimit-plugin.mjs";
import { HELPER } from "./runtime.mjs";

const SCRIPT_NAME = /^[a-z0-9_][a-z0-9_-]{0,62}$/;
const BINDING_NAME = /^[A-Za-z_$][A-Za-z0-9_$]*$/;
const MAX_VERSIONS = 100;
/** Startup checks at once: each is a workerd process. A burst of uploads queues here. */
const startupChecks = pLimit(2);
const AUTHOR = "local@tenantry.invalid";
/** Binding types the local cloud can run, and the field holding each one's value. */
const BINDING_VALUE = {
  d1: "id",
  plain_text: "text",
  secret_text: "text",
  json: "json",
  r2_bucket: "bucket_name",
  kv_namespace: "namespace_id",
  service: "service",
  dispatch_namespace: "namespace",
  ratelimit: "namespace_id",
};
/** D1 bindings a script may hold: about 5,000 fit Cloudflare's 1 MB of script metadata (D1 limits page). */
export const MAX_BINDINGS = 5_000;
/** Module MIME types (as wrangler sends them) and the Miniflare module type of each. */
const MODULE_TYPES = {
  "application/javascript+module": "ESModule",
  "application/javascript": "CommonJS",
  "application/wasm": "CompiledWasm",
  "text/plain": "Text",
  "application/octet-stream": "Data",
};

const notFound = () => new ApiError(404, 10007, "This Worker does not exist on your account.");
/** A script missing from a dispatch namespace: the code and message wrangler expects (its deploy tests' mock). */
const notInNamespace = () => new ApiError(404, 10092, "workers.api.error.environment_not_found");
const bindingError = (message) => new ApiError(400, 10021, message);

/**
 * The scripts of the account (`namespace` null) or of one dispatch namespace.
 * @typedef {{ scripts: Record<string, Script>, namespace: string | null }} Scope
 * @typedef {{ name: string, type: string, blob: string, size: number }} Module
 * @typedef {{ type: string, name: string, [field: string]: any }} Binding
 * @typedef {{
 *   id: string, number: number, created_on: string, source: string,
 *   annotations: Record<string, string>, main_module: string, modules: Module[],
 *   bindings: Binding[], compatibility_date: string, compatibility_flags: string[], etag: string,
 * }} Version
 * @typedef {{ id: string, created_on: string, source: string, strategy: string,
 *   versions: { version_id: string, percentage: number }[], annotations: Record<string, string>,
 *   author_email: string }} Deployment
 * @typedef {{ id: string, tag: string, created_on: string, modified_on: string,
 *   last_deployed_from: string, versions: Version[], deployments: Deployment[],
 *   schedules: { cron: string, created_on: string, modified_on: string }[],
 *   subdomain: { enabled: boolean, previews_enabled: boolean },
 *   settings: { logpush: boolean, observability: object, tail_consumers: object[], tags: string[] } }} Script
 */

export class Workers {
  /**
   * @param {object} opts
   * @param {import("./state.mjs").State} opts.state
   * @param {import("./runtime.mjs").Runtime} opts.runtime
   * @param {string} opts.blobDir where uploaded modules are kept (content-addressed)
   * @param {string} opts.subdomain the account's workers.dev subdomain
   * @param {number} [opts.maxBindings] D1 bindings a script may hold (MAX_BINDINGS)
   * @param {() => ({ url: string, token: string } | null)} [opts.r2Faults] where the scripts' R2
   *   bindings ask whether to fail an operation (see r2-plugin.mjs); null: plain R2 bindings
   * @param {(msg: string) => void} [opts.log]
   */
  constructor({ state, runtime, blobDir, subdomain, maxBindings = MAX_BINDINGS, r2Faults = () => null, log = () => {} }) {
    this.state = state;
    this.r2Faults = r2Faults;
    this.runtime = runtime;
    this.blobDir = blobDir;
    this.subdomain = subdomain;
    this.maxBindings = maxBindings;
    this.namespaces = new Namespaces(state);
    this.log = log;
    // Records from before scripts had versions hold only bindings; the next deploy recreates them.
    for (const [name, script] of Object.entries(state.data.scripts)) {
      if (!Array.isArray(script.versions)) delete state.data.scripts[name];
    }
  }

  /**
   * The routes under `/accounts/{id}/workers`: `p` is the path after it.
   * @returns {{ endpoint: string, run: (r: any) => any } | null}
   */
  route(method, p, on) {
    if (p.length === 1 && p[0] === "subdomain")
      return on("workers.subdomain.get", "GET", () => ({ result: { subdomain: this.subdomain } }));
    if (p.length === 2 && p[0] === "services") {
      // `wrangler delete` deletes through the services route.
      if (method === "DELETE") return on("workers.services.delete", "DELETE", (r) => this.#delete(this.#account, p[1], r));
      return on("workers.services.get", "GET", () => this.#service(p[1]));
    }
    // The local cloud has no tail Workers and no Durable Objects: their lists are empty.
    if (p.length === 3 && p[0] === "tails" && p[1] === "by-consumer") return on("workers.tails.by-consumer", "GET", () => ({ result: [] }));
    if (p.length === 2 && p[0] === "durable_objects" && p[1] === "namespaces") {
      return on("workers.durable_objects.list", "GET", () => ({
        result: [],
        result_info: { page: 1, per_page: 1000, count: 0, total_count: 0 },
      }));
    }
    if (p.length === 2 && p[0] === "workers") return on("workers.workers.get", "GET", () => this.#worker(p[1]));
    if (p[0] === "dispatch" && p[1] === "namespaces") return this.#dispatchRoute(method, p.slice(2), on);
    if (p[0] !== "scripts") return null;
    if (p.length === 1) return on("scripts.list", "GET", () => this.#list());
    const name = p[1];
    const account = this.#account;
    if (p.length === 2) {
      if (method === "PUT") return on("scripts.upload", "PUT", (r) => this.#upload(account, name, r));
      return on("scripts.delete", "DELETE", (r) => this.#delete(account, name, r));
    }
    const rest = p.slice(2).join("/");
    switch (rest) {
      case "references":
        return on("scripts.references", "GET", () => ({ result: this.#references(account, name) }));
      case "settings":
        return method === "PATCH"
          ? on("scripts.settings.patch", "PATCH", (r) => this.#patchSettings(account, name, r))
          : on("scripts.settings.get", "GET", () => this.#getSettings(account, name));
      case "script-settings":
        return method === "PATCH"
          ? on("scripts.script-settings.patch", "PATCH", (r) => this.#patchScriptSettings(name, r))
          : on("scripts.script-settings.get", "GET", () => ({ result: this.#script(name).settings }));
      case "versions":
        return method === "POST"
          ? on("scripts.versions.create", "POST", (r) => this.#createVersion(name, r))
          : on("scripts.versions.list", "GET", () => this.#listVersions(name));
      case "deployments":
        return method === "POST"
          ? on("scripts.deployments.create", "POST", (r) => this.#createDeployment(name, r))
          : on("scripts.deployments.list", "GET", () => ({ result: { deployments: this.#script(name).deployments } }));
      case "secrets":
        return method === "PUT"
          ? on("scripts.secrets.put", "PUT", (r) => this.#putSecret(name, r))
          : on("scripts.secrets.list", "GET", () => this.#listSecrets(name));
      case "schedules":
        return method === "PUT"
          ? on("scripts.schedules.put", "PUT", (r) => this.#putSchedules(name, r))
          : on("scripts.schedules.get", "GET", () => ({ result: { schedules: this.#script(name).schedules } }));
      case "subdomain":
        return method === "POST"
          ? on("scripts.subdomain.post", "POST", (r) => this.#postSubdomain(name, r))
          : on("scripts.subdomain.get", "GET", () => ({ result: this.#script(name).subdomain }));
    }
    if (p.length === 4 && p[2] === "versions")
      return on("scripts.versions.get", "GET", () => ({ result: publicVersion(this.#version(this.#script(name), p[3])) }));
    if (p.length === 4 && p[2] === "secrets") {
      return method === "DELETE"
        ? on("scripts.secrets.delete", "DELETE", () => this.#deleteSecret(name, p[3]))
        : on("scripts.secrets.get", "GET", () => this.#getSecret(name, p[3]));
    }
    return null;
  }

  /** The routes under `/workers/dispatch/namespaces`: `q` is the path after it. */
  #dispatchRoute(method, q, on) {
    if (q.length === 0) {
      return method === "POST"
        ? on("dispatch.namespaces.create", "POST", (r) => this.#createNamespace(r))
        : on("dispatch.namespaces.list", "GET", () => this.namespaces.list());
    }
    if (q.length === 1) {
      return method === "DELETE"
        ? on("dispatch.namespaces.delete", "DELETE", () => this.#deleteNamespace(q[0]))
        : on("dispatch.namespaces.get", "GET", () => ({ result: namespaceInfo(this.namespaces.require(q[0])) }));
    }
    if (q[1] !== "scripts") return null;
    // The namespace is looked up when the call runs (after fault injection and accounting).
    const scope = () => this.#namespaceScope(q[0]);
    if (q.length === 2) return on("dispatch.scripts.list", "GET", (r) => this.#listNamespaceScripts(scope(), r));
    const name = q[2];
    if (q.length === 3) {
      if (method === "PUT") return on("dispatch.scripts.upload", "PUT", (r) => this.#upload(scope(), name, r));
      if (method === "DELETE") return on("dispatch.scripts.delete", "DELETE", (r) => this.#delete(scope(), name, r));
      return on("dispatch.scripts.get", "GET", () => this.#namespaceScript(scope(), name));
    }
    if (q.length === 4 && q[3] === "settings") {
      return method === "PATCH"
        ? on("dispatch.scripts.settings.patch", "PATCH", (r) => this.#patchSettings(scope(), name, r))
        : on("dispatch.scripts.settings.get", "GET", () => this.#getSettings(scope(), name));
    }
    return null;
  }

  // --- what the runtime and the stack read ----------------------------------------------------

  /** Script `name`, or undefined. */
  get(name) {
    return this.state.data.scripts[name];
  }

  /** The version of `script` that serves (the deployment's only version), or undefined. */
  deployedVersion(name) {
    const script = this.get(name);
    return script && this.#deployed(script);
  }

  /**
   * Miniflare options of every deployed script, `entry` first (it takes the front door's
   * requests), then the scripts of every dispatch namespace under their internal names
   * (`namespaceWorkerName`), which no account script can take and the front door never reaches.
   * @param {string} entry
   * @param {(name: string) => object} [extra] more options for account script `name`
   */
  async miniflareWorkers(entry, extra = () => ({})) {
    const account = this.#account;
    const names = Object.keys(account.scripts).sort((a, b) => (a === entry ? -1 : b === entry ? 1 : a.localeCompare(b)));
    const out = [];
    for (const name of names) {
      const version = this.deployedVersion(name);
      if (version) out.push({ ...(await this.#workerOptions(account, name, version)), ...extra(name) });
    }
    for (const ns of Object.keys(this.namespaces.all).sort()) {
      const scope = this.#namespaceScope(ns);
      for (const name of Object.keys(scope.scripts).sort()) {
        const version = this.#deployedIn(scope, name);
        if (version) out.push(await this.#workerOptions(scope, name, version));
      }
    }
    return out;
  }

  /** Miniflare options of one deployed version of script `name` of `scope`. */
  async #workerOptions(scope, name, version) {
    const worker = workerName(scope, name);
    // A service binding to a script that is gone fails when called, as on Cloudflare; it must
    // not keep the other Workers from starting.
    const bindings = version.bindings.filter((b) => b.type !== "service" || this.#deployedIn(scope, b.service));
    return {
      name: worker,
      ...(await this.#modulesOptions(worker, version)),
      ...bindingOptions(bindings, {
        worker: (service) => workerName(scope, service),
        dispatchTargets: (namespace) => this.#dispatchTargets(namespace),
        r2Faults: this.r2Faults(),
      }),
      compatibilityDate: version.compatibility_date,
      compatibilityFlags: version.compatibility_flags,
    };
  }

  /** The deployed scripts of dispatch namespace `namespace`, each to its internal Worker name. */
  #dispatchTargets(namespace) {
    const ns = this.namespaces.find(namespace);
    if (!ns) return {};
    const scope = this.#namespaceScope(namespace);
    return Object.fromEntries(
      Object.keys(ns.scripts)
        .filter((name) => this.#deployedIn(scope, name))
        .map((name) => [name, namespaceWorkerName(namespace, name)]),
    );
  }

  /**
   * Runs the cron triggers: at the start of every minute, each deployed script's schedules that
   * match it fire its scheduled handler, as Cloudflare's cron triggers do. Returns a stop function.
   */
  startSchedules() {
    let timer;
    const tick = async () => {
      const minute = new Date(Math.floor(Date.now() / 60_000) * 60_000);
      timer = setTimeout(tick, minute.getTime() + 60_000 - Date.now());
      for (const script of Object.values(this.state.data.scripts)) {
        if (!this.deployedVersion(script.id)) continue;
        for (const { cron } of script.schedules) {
          if (!new Cron(cron, { paused: true, timezone: "UTC" }).match(minute)) continue;
          const started = performance.now();
          try {
            const { outcome } = await this.runtime.scheduled(cron, script.id);
            this.log(`cron ${cron} on ${script.id}: ${outcome} in ${Math.round(performance.now() - started)} ms`);
          } catch (e) {
            this.log(`cron ${cron} on ${script.id} failed: ${e.message}`);
          }
        }
      }
    };
    timer = setTimeout(tick, 60_000 - (Date.now() % 60_000));
    return () => clearTimeout(timer);
  }

  // --- services and scripts -------------------------------------------------------------------

  /** @returns {Scope} */
  get #account() {
    return { scripts: this.state.data.scripts, namespace: null };
  }

  /** @returns {Scope} */
  #namespaceScope(namespace) {
    return { scripts: this.namespaces.require(namespace).scripts, namespace };
  }

  /** @returns {Script} */
  #script(name, scope = this.#account) {
    const script = Object.hasOwn(scope.scripts, name) ? scope.scripts[name] : undefined;
    if (!script) throw scope.namespace === null ? notFound() : notInNamespace();
    return script;
  }

  /** The deployed version of script `name` of `scope`, or undefined. */
  #deployedIn(scope, name) {
    const script = Object.hasOwn(scope.scripts, name) ? scope.scripts[name] : undefined;
    return script && this.#deployed(script);
  }

  #deployed(script) {
    const current = script.deployments[0];
    return current && script.versions.find((v) => v.id === current.versions[0].version_id);
  }

  #version(script, id) {
    const version = script.versions.find((v) => v.id === id);
    if (!version) throw new ApiError(404, 10212, `Version ${id} not found on script ${script.id}`);
    return version;
  }

  #service(name) {
    const script = this.#script(name);
    return {
      result: {
        id: name,
        default_environment: {
          environment: "production",
          created_on: script.created_on,
          modified_on: script.modified_on,
          script: scriptInfo(script, this.#deployed(script)),
        },
        created_on: script.created_on,
        modified_on: script.modified_on,
      },
    };
  }

  /** `GET /workers/workers/{name}`: the newer Workers API's view of a script (wrangler reads its subdomain there). */
  #worker(name) {
    const script = this.#script(name);
    return {
      result: {
        id: script.tag,
        name: script.id,
        created_on: script.created_on,
        updated_on: script.modified_on,
        logpush: script.settings.logpush,
        observability: script.settings.observability,
        subdomain: script.subdomain,
        tags: script.settings.tags,
        tail_consumers: script.settings.tail_consumers,
      },
    };
  }

  #list() {
    return { result: Object.values(this.state.data.scripts).map((s) => scriptInfo(s, this.#deployed(s))) };
  }

  /**
   * `PUT /scripts/{name}` (or `PUT /dispatch/namespaces/{ns}/scripts/{name}`): a new version,
   * deployed at once; creates the script on first use.
   * @param {Scope} given
   * @param {string} name
   * @param {{ url: URL, headers: Record<string, any>, body: Buffer }} request
   */
  async #upload(given, name, { url, headers, body }) {
    if (!SCRIPT_NAME.test(name) || (given.namespace === null && name === HELPER))
      throw new ApiError(400, 10016, "Invalid Worker name: lowercase letters, digits, '-' and '_', 63 at most");
    const upload = await this.#readUpload(headers, body);
    const now = new Date().toISOString();
    // The upload's startup check awaited: the namespace may have gone meanwhile.
    const scope = given.namespace === null ? this.#account : this.#namespaceScope(given.namespace);
    const scripts = scope.scripts;
    if (!Object.hasOwn(scripts, name))
      scripts[name] = {
        id: name,
        tag: randomUUID().replaceAll("-", ""),
        created_on: now,
        modified_on: now,
        last_deployed_from: "wrangler",
        versions: [],
        deployments: [],
        schedules: [],
        subdomain: { enabled: false, previews_enabled: false },
        settings: { logpush: false, observability: { enabled: false }, tail_consumers: [], tags: [] },
      };
    const script = scripts[name];
    let version;
    try {
      version = this.#newVersion(script, upload, {
        strict: url.searchParams.get("bindings_inherit") === "strict",
        source: "wrangler",
        triggeredBy: "upload",
        scope,
      });
    } catch (e) {
      if (script.versions.length === 0) delete scripts[name];
      throw e;
    }
    this.#deploy(script, version, { source: "wrangler", triggeredBy: "upload", message: upload.metadata.annotations?.["workers/message"] });
    script.last_deployed_from = "wrangler";
    // Tags may come with the upload's metadata (the API's `tags`; wrangler sets them through
    // script-settings instead); a namespace's script list filters on them.
    if (Array.isArray(upload.metadata.tags) && upload.metadata.tags.every((t) => typeof t === "string"))
      script.settings.tags = upload.metadata.tags;
    await this.#commit(`${describe(scope, name)} uploaded`);
    const info = scriptInfo(script, version);
    return {
      result: {
        ...info,
        deployment_id: version.id,
        startup_time_ms: 0,
        ...(url.searchParams.get("excludeScript") === "true" ? {} : { script: null }),
      },
    };
  }

  /**
   * What depends on script `name` of `scope`: the scripts of the same scope whose serving version
   * binds it as a service.
   * @param {Scope} scope
   * @param {string} name
   */
  #references(scope, name) {
    this.#script(name, scope);
    const incoming = Object.values(scope.scripts)
      .filter((s) => s.id !== name && this.#deployed(s)?.bindings.some((b) => b.type === "service" && b.service === name))
      .map((s) => ({ service: s.id, environment: "production" }));
    return { services: { incoming, outgoing: [] }, durable_objects: [], dispatch_outbounds: [], pages_function: false };
  }

  /**
   * Deletes a script. Refused while other scripts bind it as a service unless `force=true`, as
   * the real API does (`wrangler delete` shows the dependents and asks before forcing).
   * @param {Scope} scope
   * @param {string} name
   * @param {{ url: URL }} request
   */
  async #delete(scope, name, { url }) {
    const script = this.#script(name, scope);
    const dependents = this.#references(scope, name).services.incoming.map((r) => r.service);
    if (dependents.length && url.searchParams.get("force") !== "true") {
      // The real error code is unconfirmed; the local cloud answers 10064.
      throw new ApiError(
        400,
        10064,
        `${name} is used by other Workers (${dependents.join(", ")}) as a service binding: delete with force=true to delete it anyway`,
      );
    }
    delete scope.scripts[script.id];
    await this.#commit(`${describe(scope, name)} deleted`);
    return { result: null };
  }

  // --- dispatch namespaces --------------------------------------------------------------------

  async #createNamespace({ body }) {
    const ns = this.namespaces.create(body);
    await this.#commit(null);
    return { result: namespaceInfo(ns) };
  }

  async #deleteNamespace(name) {
    const hadScripts = this.namespaces.delete(name);
    await this.#commit(hadScripts ? `dispatch namespace ${name} deleted` : null);
    return { result: null };
  }

  /**
   * `GET .../namespaces/{ns}/scripts/{name}`: the script with its namespace.
   * @param {Scope} scope
   * @param {string} name
   */
  #namespaceScript(scope, name) {
    return { result: namespaceScriptInfo(scope, this.#script(name, scope), this.#deployedIn(scope, name)) };
  }

  /**
   * `GET .../namespaces/{ns}/scripts?tags=a:yes,b:no`: every script of the namespace (no
   * pagination in the API), filtered on tags: `yes` keeps the scripts with the tag, `no` those
   * without it.
   * @param {Scope} scope
   * @param {{ url: URL }} request
   */
  #listNamespaceScripts(scope, { url }) {
    const filters = (url.searchParams.get("tags") ?? "")
      .split(",")
      .filter(Boolean)
      .map((f) => {
        const [tag, allowed = "yes"] = f.split(":");
        if (!tag || !["yes", "no"].includes(allowed)) throw malformed("tags must be a comma-separated list of tag:yes or tag:no");
        return { tag, want: allowed === "yes" };
      });
    const result = Object.values(scope.scripts)
      .filter((s) => filters.every(({ tag, want }) => s.settings.tags.includes(tag) === want))
      .map((s) => namespaceScriptInfo(scope, s, this.#deployed(s)));
    return { result };
  }

  // --- versions and deployments ---------------------------------------------------------------

  async #createVersion(name, { url, headers, body }) {
    const script = this.#script(name);
    const upload = await this.#readUpload(headers, body);
    const version = this.#newVersion(script, upload, {
      strict: url.searchParams.get("bindings_inherit") === "strict",
      source: "wrangler",
      triggeredBy: "upload",
      scope: this.#account,
    });
    await this.#commit(null);
    return { result: publicVersion(version) };
  }

  #listVersions(name) {
    const script = this.#script(name);
    const items = [...script.versions].reverse().map(publicVersion);
    return { result: { items }, result_info: { count: items.length, total_count: items.length, page: 1, per_page: items.length } };
  }

  async #createDeployment(name, { url, body }) {
    const script = this.#script(name);
    const input = parseJson(body);
    if (input?.strategy !== "percentage" || !Array.isArray(input.versions) || input.versions.length === 0) {
      throw malformed('a deployment needs strategy "percentage" and a non-empty versions list');
    }
    const total = input.versions.reduce((n, v) => n + v.percentage, 0);
    if (input.versions.some((v) => typeof v?.version_id !== "string" || typeof v.percentage !== "number") || Math.abs(total - 100) > 1e-9) {
      throw new ApiError(400, 10200, "The percentages of a deployment's versions must add up to 100");
    }
    if (input.versions.length > 1) {
      // The local runtime runs one version of a script at a time (documented in the README).
      throw new ApiError(
        400,
        10200,
        "The local cloud serves one version per script: gradual deployments (several versions) are not supported",
      );
    }
    const version = this.#version(script, input.versions[0].version_id);
    const previous = this.#deployed(script);
    if (previous && url.searchParams.get("force") !== "true") {
      // The real API refuses to deploy a version whose secrets differ from the deployed one's
      // unless forced (`wrangler rollback` asks, then forces).
      const changed = changedSecrets(previous, version);
      if (changed.length)
        throw new ApiError(
          400,
          10220,
          `A secret has changed since this version was deployed. The following secrets have changed: ${changed.join(", ")}`,
        );
    }
    const deployment = this.#deploy(script, version, {
      source: "wrangler",
      message: input.annotations?.["workers/message"],
      // The triggers wrangler knows: a version newer than the one serving and never deployed is
      // the second half of an upload; an older one, a rollback; any other, a promotion.
      triggeredBy:
        previous && version.number < previous.number
          ? "rollback"
          : script.deployments.some((d) => d.versions.some((v) => v.version_id === version.id))
            ? "promotion"
            : "upload",
    });
    await this.#commit(`${name} deployed version ${version.number}`);
    return { result: deployment };
  }

  /**
   * Makes a version of `script` from an upload. Bindings are resolved against the latest
   * version: `inherit` copies one by name; `keep_bindings` copies every one of the listed types
   * not named in the upload.
   * @returns {Version}
   */
  #newVersion(script, upload, { strict, source, triggeredBy, scope }) {
    const latest = script.versions.at(-1);
    const { metadata, modules } = upload;
    let bindings = this.#resolveBindings(metadata.bindings ?? [], latest?.bindings ?? [], { strict, scope, self: script.id });
    const keep = Array.isArray(metadata.keep_bindings) ? metadata.keep_bindings : [];
    if (latest && keep.length) {
      const named = new Set(bindings.map((b) => b.name));
      bindings = [...bindings, ...latest.bindings.filter((b) => keep.includes(b.type) && !named.has(b.name))];
    }
    return this.#addVersion(script, {
      main_module: metadata.main_module,
      modules,
      bindings,
      compatibility_date: metadata.compatibility_date ?? latest?.compatibility_date ?? "2025-01-01",
      compatibility_flags: metadata.compatibility_flags ?? [],
      source,
      annotations: { ...(metadata.annotations ?? {}), "workers/triggered_by": triggeredBy },
    });
  }

  /**
   * Appends a version (numbered after the latest), keeping the last MAX_VERSIONS. Every new
   * version passes here: one holding more than `maxBindings` D1 bindings is refused, and nothing
   * changes.
   */
  #addVersion(script, fields) {
    const d1 = fields.bindings.filter((b) => b.type === "d1").length;
    if (d1 > this.maxBindings) {
      throw new ApiError(
        400,
        10021,
        `Script metadata too large: ${d1} D1 bindings, more than the ${this.maxBindings} a script can hold (Cloudflare caps script metadata at 1 MB)`,
      );
    }
    const version = {
      id: randomUUID(),
      number: (script.versions.at(-1)?.number ?? 0) + 1,
      created_on: new Date().toISOString(),
      etag: createHash("sha256")
        .update(fields.modules.map((m) => `${m.name}:${m.blob}`).join("\n"))
        .digest("hex"),
      ...fields,
    };
    script.versions.push(version);
    const deployedId = script.deployments[0]?.versions[0].version_id;
    while (script.versions.length > MAX_VERSIONS) {
      // Never drop the one that serves.
      const drop = script.versions.findIndex((v) => v.id !== deployedId);
      script.versions.splice(drop, 1);
    }
    script.modified_on = version.created_on;
    return version;
  }

  /**
   * Makes `version` the one that serves.
   * @param {Script} script
   * @param {Version} version
   * @param {{ source: string, triggeredBy: string | null, message?: string }} how
   */
  #deploy(script, version, { source, message = undefined, triggeredBy }) {
    /** @type {Deployment} */
    const deployment = {
      id: randomUUID(),
      created_on: new Date().toISOString(),
      source,
      strategy: "percentage",
      versions: [{ version_id: version.id, percentage: 100 }],
      annotations: { ...(triggeredBy ? { "workers/triggered_by": triggeredBy } : {}), ...(message ? { "workers/message": message } : {}) },
      author_email: AUTHOR,
    };
    script.deployments.unshift(deployment);
    script.deployments.length = Math.min(script.deployments.length, MAX_VERSIONS);
    script.modified_on = deployment.created_on;
    return deployment;
  }

  /** Saves the state and, when what serves changed, restarts workerd on it (drained). */
  async #commit(restartReason) {
    await this.state.save();
    if (restartReason) this.runtime.requestRestart(restartReason);
  }

  /** A change made by the API (settings, secrets): a new version from the deployed one, deployed. */
  async #apiChange(script, code, what, change, triggeredBy) {
    const latest = script.versions.at(-1);
    const deployed = this.#deployed(script);
    if (!deployed || latest.id !== deployed.id) {
      throw new ApiError(
        400,
        code,
        `${what} failed. You attempted to modify ${what === "Settings edit" ? "settings" : "a secret"}, but the latest version of your Worker isn't currently deployed. Deploy the latest version (wrangler versions deploy) first.`,
      );
    }
    const version = this.#addVersion(script, {
      main_module: latest.main_module,
      modules: latest.modules,
      bindings: change(latest.bindings),
      compatibility_date: latest.compatibility_date,
      compatibility_flags: latest.compatibility_flags,
      source: "api",
      // A settings change carries no trigger (wrangler shows its source, "API"); a secret, "secret".
      annotations: triggeredBy ? { "workers/triggered_by": triggeredBy } : {},
    });
    this.#deploy(script, version, { source: "api", triggeredBy });
    script.last_deployed_from = "api";
    await this.#commit(`${what.toLowerCase()} of ${script.id}`);
    return version;
  }

  // --- settings, secrets, triggers ------------------------------------------------------------

  /**
   * @param {Scope} scope
   * @param {string} name
   */
  #getSettings(scope, name) {
    const script = this.#script(name, scope);
    return { result: publicSettings(script, this.#deployed(script)) };
  }

  /**
   * @param {Scope} scope
   * @param {string} name
   * @param {{ headers: Record<string, any>, body: Buffer }} request
   */
  async #patchSettings(scope, name, { headers, body }) {
    const script = this.#script(name, scope);
    const form = await parseMultipart(headers, body);
    const part = form.get("settings");
    if (part === null) throw malformed("multipart part `settings` is required");
    const settings = parseJson(await partBytes(part));
    if (typeof settings !== "object" || settings === null || Array.isArray(settings)) throw malformed("settings must be a JSON object");
    const previous = this.#deployed(script);
    const bindings =
      settings.bindings === undefined
        ? null
        : this.#resolveBindings(settings.bindings, previous?.bindings ?? [], { strict: true, scope, self: name });
    const version = bindings ? await this.#apiChange(script, 10214, "Settings edit", () => bindings, null) : previous;
    return { result: publicSettings(script, version) };
  }

  async #patchScriptSettings(name, { body }) {
    const script = this.#script(name);
    const input = parseJson(body);
    if (typeof input !== "object" || input === null || Array.isArray(input)) throw malformed("script settings must be a JSON object");
    for (const key of ["logpush", "observability", "tail_consumers", "tags"])
      if (input[key] !== undefined) script.settings[key] = input[key];
    await this.#commit(null);
    return { result: script.settings };
  }

  #listSecrets(name) {
    const deployed = this.#deployed(this.#script(name));
    return { result: (deployed?.bindings ?? []).filter((b) => b.type === "secret_text").map((b) => ({ name: b.name, type: b.type })) };
  }

  #getSecret(name, secret) {
    const found = (this.#deployed(this.#script(name))?.bindings ?? []).find((b) => b.type === "secret_text" && b.name === secret);
    if (!found) throw new ApiError(404, 10056, `Secret ${secret} not found`);
    return { result: { name: found.name, type: found.type } };
  }

  async #putSecret(name, { body }) {
    const script = this.#script(name);
    const input = parseJson(body);
    if (typeof input?.name !== "string" || !BINDING_NAME.test(input.name))
      throw bindingError("secret name must be a valid JavaScript identifier");
    if (typeof input.text !== "string") throw malformed("secret text must be a string");
    if (input.type !== undefined && input.type !== "secret_text") throw malformed("secret type must be secret_text");
    await this.#apiChange(
      script,
      10215,
      "Secret edit",
      (bindings) => [...bindings.filter((b) => b.name !== input.name), { type: "secret_text", name: input.name, text: input.text }],
      "secret",
    );
    return { result: { name: input.name, type: "secret_text" } };
  }

  async #deleteSecret(name, secret) {
    const script = this.#script(name);
    const deployed = this.#deployed(script);
    if (!deployed?.bindings.some((b) => b.type === "secret_text" && b.name === secret))
      throw new ApiError(404, 10056, `Secret ${secret} not found`);
    await this.#apiChange(script, 10215, "Secret edit", (bindings) => bindings.filter((b) => b.name !== secret), "secret");
    return { result: null };
  }

  async #putSchedules(name, { body }) {
    const script = this.#script(name);
    const input = parseJson(body);
    if (
      !Array.isArray(input) ||
      input.some((s) => typeof s?.cron !== "string" || s.cron.trim().split(/\s+/).length !== 5 || !validCron(s.cron))
    ) {
      throw new ApiError(400, 10100, "schedules must be a list of { cron } with valid five-field cron expressions");
    }
    const now = new Date().toISOString();
    script.schedules = input.map((s) => ({ cron: s.cron, created_on: now, modified_on: now }));
    await this.#commit(null);
    return { result: { schedules: script.schedules } };
  }

  async #postSubdomain(name, { body }) {
    const script = this.#script(name);
    const input = parseJson(body);
    if (typeof input?.enabled !== "boolean") throw malformed("enabled must be a boolean");
    script.subdomain = {
      enabled: input.enabled,
      previews_enabled: typeof input.previews_enabled === "boolean" ? input.previews_enabled : input.enabled,
    };
    await this.#commit(null);
    return { result: script.subdomain };
  }

  // --- uploads --------------------------------------------------------------------------------

  /** Reads a script upload (multipart: `metadata` and one part per module), storing the modules. */
  async #readUpload(headers, body) {
    const form = await parseMultipart(headers, body);
    const metaPart = form.get("metadata");
    if (metaPart === null) throw malformed("multipart part `metadata` is required");
    const metadata = parseJson(await partBytes(metaPart));
    if (typeof metadata !== "object" || metadata === null) throw malformed("metadata must be a JSON object");
    if (typeof metadata.main_module !== "string") {
      throw new ApiError(400, 10021, "The local cloud runs ES module Workers only: metadata.main_module is required");
    }
    if (metadata.compatibility_date !== undefined && !/^\d{4}-\d{2}-\d{2}$/.test(metadata.compatibility_date)) {
      throw new ApiError(400, 10021, "compatibility_date must be YYYY-MM-DD");
    }
    /** @type {Module[]} */
    const modules = [];
    for (const [name, part] of form) {
      if (name === "metadata" || typeof part === "string") continue;
      const mime = part.type.split(";")[0].trim();
      if (mime === "application/source-map") continue;
      if (!MODULE_TYPES[mime]) throw new ApiError(400, 10021, `module ${name}: unsupported type ${JSON.stringify(part.type)}`);
      const bytes = Buffer.from(await part.arrayBuffer());
      modules.push({ name, type: mime, blob: await this.#store(bytes), size: bytes.length });
    }
    if (!modules.some((m) => m.name === metadata.main_module && MODULE_TYPES[m.type] === "ESModule")) {
      throw new ApiError(
        400,
        10021,
        `No such module ${JSON.stringify(metadata.main_module)}: the main module must be uploaded as application/javascript+module`,
      );
    }
    await this.#validate(metadata, modules);
    return { metadata, modules };
  }

  /** Stores `bytes` under their hash; returns the hash. */
  async #store(bytes) {
    const hash = createHash("sha256").update(bytes).digest("hex");
    const file = path.join(this.blobDir, hash);
    if (!existsSync(file)) {
      await mkdir(this.blobDir, { recursive: true });
      const tmp = `${file}.${process.pid}.${randomUUID()}.tmp`;
      await writeFile(tmp, bytes);
      await rename(tmp, file);
    }
    return hash;
  }

  /**
   * Starts the upload once on its own, without bindings, as the real API does before it accepts a
   * version (a script that throws at startup is refused with 10021, and never replaces the
   * Worker that serves).
   */
  #validate(metadata, modules) {
    return startupChecks(() => this.#startOnce(metadata, modules));
  }

  async #startOnce(metadata, modules) {
    const mf = new Miniflare(
      convertV4MiniflareOptions({
        workers: [
          {
            name: "upload",
            ...(await this.#modulesOptions("upload", { modules, main_module: metadata.main_module })),
            compatibilityDate: metadata.compatibility_date ?? "2025-01-01",
            compatibilityFlags: metadata.compatibility_flags ?? [],
          },
        ],
      }),
    );
    try {
      await mf.ready;
    } catch (e) {
      throw new ApiError(400, 10021, `Uncaught error while starting the script: ${String(e.message ?? e).slice(0, 2000)}`);
    } finally {
      await mf.dispose().catch(() => {});
    }
  }

  async #modulesOptions(name, version) {
    const root = `/scripts/${name}`;
    return {
      modulesRoot: root,
      modules: await Promise.all(
        // The main module first: workerd takes the first module as the entry point.
        [...version.modules]
          .sort((a, b) => (a.name === version.main_module ? -1 : b.name === version.main_module ? 1 : 0))
          .map(async (m) => ({
            type: MODULE_TYPES[m.type],
            path: `${root}/${m.name}`,
            contents: await readFile(path.join(this.blobDir, m.blob)),
          })),
      ),
    };
  }

  /**
   * Resolves the bindings of a new version against `previous`. A binding sent as
   * `{ type: "inherit", name }`, or with its type but without its value, keeps the previous one;
   * with `strict`, inheriting what does not exist fails (10057).
   */
  #resolveBindings(next, previous, { strict, scope, self }) {
    if (!Array.isArray(next)) throw bindingError("bindings must be an array");
    const byName = new Map(previous.map((b) => [b.name, b]));
    const seen = new Set();
    const out = [];
    for (const b of next) {
      if (typeof b?.name !== "string" || !BINDING_NAME.test(b.name))
        throw bindingError(`binding name ${JSON.stringify(b?.name)} is not a valid JavaScript identifier`);
      if (seen.has(b.name)) throw bindingError(`binding name '${b.name}' is used more than once`);
      seen.add(b.name);
      const old = byName.get(b.name);
      const valueField = BINDING_VALUE[b.type];
      if (b.type === "inherit" || (valueField && !(valueField in b) && !(b.type === "d1" && "database_id" in b))) {
        if (!old) {
          if (strict) throw new ApiError(400, 10057, `binding '${b.name}' cannot inherit: the previous version has no such binding`);
          continue;
        }
        if (b.type !== "inherit" && old.type !== b.type)
          throw bindingError(`binding '${b.name}' cannot inherit: it is a ${old.type} binding, not ${b.type}`);
        out.push(old);
        continue;
      }
      if (!valueField) throw bindingError(`binding type ${JSON.stringify(b.type)} is not supported by the local cloud`);
      out.push(this.#checkBinding(b, valueField, scope, self));
    }
    return out;
  }

  #checkBinding(b, valueField, scope, self) {
    switch (b.type) {
      case "d1": {
        const id = b.id ?? b.database_id;
        if (typeof id !== "string" || !this.state.data.databases[id])
          throw bindingError(`binding '${b.name}' refers to D1 database ${JSON.stringify(id)}, which does not exist`);
        return { type: "d1", name: b.name, id };
      }
      case "r2_bucket":
        if (typeof b.bucket_name !== "string" || !BUCKET_NAME.test(b.bucket_name))
          throw bindingError(`binding '${b.name}' needs a valid bucket_name`);
        break;
      case "plain_text":
      case "secret_text":
        if (typeof b.text !== "string") throw bindingError(`binding '${b.name}' needs a string text`);
        break;
      case "kv_namespace":
        if (typeof b.namespace_id !== "string" || !b.namespace_id) throw bindingError(`binding '${b.name}' needs a namespace_id`);
        break;
      case "service":
        if (typeof b.service !== "string" || (b.service !== self && !this.#deployedIn(scope, b.service))) {
          const where = scope.namespace === null ? "on this account" : `in dispatch namespace ${scope.namespace}`;
          throw bindingError(`binding '${b.name}' refers to Worker ${JSON.stringify(b.service)}, which is not deployed ${where}`);
        }
        return { type: "service", name: b.name, service: b.service, ...(b.entrypoint ? { entrypoint: b.entrypoint } : {}) };
      case "ratelimit": {
        const { limit, period } = b.simple ?? {};
        if (!/^[1-9][0-9]*$/.test(String(b.namespace_id ?? "")))
          throw bindingError(`binding '${b.name}' needs a positive integer namespace_id`);
        if (!Number.isInteger(limit) || limit < 1 || ![10, 60].includes(period))
          throw bindingError(`binding '${b.name}': simple must be { limit: a positive integer, period: 10 or 60 }`);
        return { type: "ratelimit", name: b.name, namespace_id: String(b.namespace_id), simple: { limit, period } };
      }
      case "dispatch_namespace":
        if (typeof b.namespace !== "string" || !this.namespaces.find(b.namespace))
          throw bindingError(`binding '${b.name}' refers to dispatch namespace ${JSON.stringify(b.namespace)}, which does not exist`);
        if (b.outbound !== undefined) throw bindingError(`binding '${b.name}': outbound Workers are not supported by the local cloud`);
        return { type: "dispatch_namespace", name: b.name, namespace: b.namespace };
    }
    return { type: b.type, name: b.name, [valueField]: b[valueField] };
  }
}

// --- shapes ---------------------------------------------------------------------------------

/** The name script `name` of `scope` runs under in workerd. */
function workerName(scope, name) {
  return scope.namespace === null ? name : namespaceWorkerName(scope.namespace, name);
}

/** Script `name` of `scope`, for logs. */
function describe(scope, name) {
  return scope.namespace === null ? name : `${name} (dispatch namespace ${scope.namespace})`;
}

/** A script of a dispatch namespace as the API shows it (details and list). */
function namespaceScriptInfo(scope, script, deployed) {
  return {
    created_on: script.created_on,
    dispatch_namespace: scope.namespace,
    modified_on: script.modified_on,
    script: scriptInfo(script, deployed),
  };
}

function validCron(pattern) {
  try {
    new Cron(pattern, { paused: true, timezone: "UTC" });
    return true;
  } catch {
    return false;
  }
}

/** The bytes of a multipart part (a string or a file). */
async function partBytes(part) {
  return Buffer.from(typeof part === "string" ? part : await part.arrayBuffer());
}

/** A binding as the API shows it: secrets without their value, D1 with `database_id` too. */
function publicBinding(b) {
  if (b.type === "secret_text") return { type: b.type, name: b.name };
  if (b.type === "d1") return { ...b, database_id: b.id };
  return b;
}

function publicSettings(script, version) {
  return {
    bindings: (version?.bindings ?? []).map(publicBinding),
    compatibility_date: version?.compatibility_date,
    compatibility_flags: version?.compatibility_flags ?? [],
    logpush: script.settings.logpush,
    observability: script.settings.observability,
    tail_consumers: script.settings.tail_consumers,
    tags: script.settings.tags,
    placement: {},
    usage_model: "standard",
    limits: {},
    modified_on: script.modified_on,
  };
}

function handlers(version) {
  return version ? ["fetch", "scheduled"] : [];
}

function scriptInfo(script, deployed) {
  return {
    id: script.id,
    tag: script.tag,
    tags: script.settings.tags,
    etag: deployed?.etag ?? null,
    handlers: handlers(deployed),
    created_on: script.created_on,
    modified_on: script.modified_on,
    last_deployed_from: script.last_deployed_from,
    usage_model: "standard",
    compatibility_date: deployed?.compatibility_date,
    compatibility_flags: deployed?.compatibility_flags ?? [],
    has_modules: true,
    has_assets: false,
    logpush: script.settings.logpush,
    placement_mode: null,
  };
}

function publicVersion(v) {
  return {
    id: v.id,
    number: v.number,
    metadata: {
      author_email: AUTHOR,
      author_id: "local",
      created_on: v.created_on,
      modified_on: v.created_on,
      source: v.source,
      hasPreview: false,
    },
    annotations: v.annotations,
    resources: {
      bindings: v.bindings.map(publicBinding),
      script: { etag: v.etag, handlers: handlers(v), last_deployed_from: v.source },
      script_runtime: {
        compatibility_date: v.compatibility_date,
        compatibility_flags: v.compatibility_flags,
        usage_model: "standard",
        limits: {},
      },
    },
    startup_time_ms: 0,
  };
}

/** Secrets whose value differs between the two versions, or that only one of them has. */
function changedSecrets(a, b) {
  const secrets = (v) => new Map(v.bindings.filter((x) => x.type === "secret_text").map((x) => [x.name, x.text]));
  const [sa, sb] = [secrets(a), secrets(b)];
  return [...new Set([...sa.keys(), ...sb.keys()])].filter((n) => sa.get(n) !== sb.get(n)).sort();
}

/**
 * Miniflare options for a version's bindings.
 * @param {Binding[]} bindings
 * @param {object} [how]
 * @param {(service: string) => string} [how.worker] the Worker name a service binding's script runs under
 * @param {(namespace: string) => Record<string, string>} [how.dispatchTargets] the scripts a
 *   dispatch namespace binding reaches, each to the Worker name it runs under
 * @param {{ url: string, token: string } | null} [how.r2Faults] where R2 bucket bindings ask
 *   whether to fail an operation (r2-plugin.mjs); null: plain Miniflare R2 bindings
 */
export function bindingOptions(bindings, { worker = (service) => service, dispatchTargets = () => ({}), r2Faults = null } = {}) {
  const d1Databases = {};
  const r2Buckets = {};
  const kvNamespaces = {};
  const serviceBindings = {};
  const unsafeBindings = [];
  const vars = {};
  for (const b of bindings) {
    if (b.type === "d1") d1Databases[b.name] = b.id;
    else if (b.type === "r2_bucket" && r2Faults) unsafeBindings.push(r2Binding(b.name, b.bucket_name, r2Faults));
    else if (b.type === "r2_bucket") r2Buckets[b.name] = b.bucket_name;
    else if (b.type === "kv_namespace") kvNamespaces[b.name] = b.namespace_id;
    else if (b.type === "service")
      serviceBindings[b.name] = b.entrypoint ? { name: worker(b.service), entrypoint: b.entrypoint } : worker(b.service);
    else if (b.type === "dispatch_namespace") unsafeBindings.push(dispatchBinding(b.name, b.namespace, dispatchTargets(b.namespace)));
    // In the Worker's own isolate, as on Cloudflare (see ratelimit-plugin.mjs), not Miniflare's.
    else if (b.type === "ratelimit") unsafeBindings.push(ratelimitBinding(b.name, b.simple));
    else if (b.type === "json") vars[b.name] = b.json;
    else vars[b.name] = b.text;
  }
  return {
    d1Databases,
    r2Buckets,
    kvNamespaces,
    serviceBindings,
    ...(unsafeBindings.length ? { unsafeBindings } : {}),
    bindings: vars,
  };
}
