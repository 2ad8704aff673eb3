// Workers for Platforms in the local cloud: dispatch namespaces (this file: the registry and its
// shapes) and the scripts inside them (cloud/workers.mjs, on the same version machinery as the
// account's scripts; cloud/dispatch-plugin.mjs runs the `dispatch_namespace` binding).
//
// What was checked, and where:
// - Routes and shapes: the API schema (cloudflare/api-schemas openapi.json, operations
//   namespace-worker-*; the same in cloudflare-python's types/workers_for_platforms/dispatch and
//   in the cloudflare TypeScript SDK bundled in wrangler 4.164):
//   `GET/POST /accounts/{a}/workers/dispatch/namespaces` (POST body `{name}`),
//   `GET/DELETE .../namespaces/{ns}`; a namespace is `{namespace_id, namespace_name, created_on,
//   created_by, modified_on, modified_by, script_count, trusted_workers}`.
//   `PUT .../namespaces/{ns}/scripts/{name}` (multipart upload, `?bindings_inherit=`; result: the
//   script), `GET` (`{created_on, dispatch_namespace, modified_on, script}`), `DELETE`
//   (`?force=`), `GET/PATCH .../scripts/{name}/settings` (as the account's), and
//   **`GET .../namespaces/{ns}/scripts`** (namespace-worker-list-scripts, `?tags=`): a list endpoint
//   exists; its result is an array of the same `{created_on, dispatch_namespace, modified_on,
//   script}` objects, without pagination.
// - wrangler 4.164 (`wrangler dispatch-namespace create|list|get|delete|rename`, packages/wrangler/
//   src/dispatch-namespace.ts): POST `{name}`, reads `namespace_id` from the answer; list and get
//   print the result. `wrangler deploy` with `[[dispatch_namespaces]]` first lists the namespaces
//   (`GET .../dispatch/namespaces?page=1`, provision-bindings.ts) to check the namespace exists
//   (and would create it if not), then uploads the binding as
//   `{"type": "dispatch_namespace", "name": <binding>, "namespace": <namespace>}` (plus
//   `outbound: {worker: {service, environment}, params: [{name}]}` when configured;
//   create-worker-upload-form.ts), or `{"type": "inherit", "name"}` when the previous version
//   has the same binding.
// - A script missing from a namespace answers code 10092 (`workers.api.error.environment_not_found`):
//   `wrangler deploy --dispatch-namespace` takes that code for "first upload" (deploy.ts in
//   wrangler 4.164; the mock in workers-sdk's deploy test helpers). The HTTP status, 404 here, is
//   not shown there.
// - Runtime (Cloudflare's dynamic dispatch docs; workerd issue 5263): `env.NS.get(name)` never
//   throws; for a missing script the Fetcher's `fetch` rejects with an error whose message starts
//   with "Worker not found".
// - Not found: the error codes of a duplicate namespace name and of an unknown namespace are not
//   documented anywhere we could reach. What clients observed (alchemy's DispatchNamespace): a
//   duplicate answers 400 with "already exists" in the message; an unknown namespace answers 404.
//   The codes below (10021, the documented generic validation code; 10007, the documented "not
//   found" of the Workers API) are the local cloud's choice: match on the HTTP status, not on them.
// - Too many bindings: the only documented cap is 1 MB of script metadata (about 5,000 D1
//   bindings, D1 limits page); no code is documented for it, so the local cloud answers 10021
//   (validation error), see `maxBindings` in cloud/workers.mjs.

import { createHash, randomUUID } from "node:crypto";
import { ApiError, malformed, parseJson } from "./http.mjs";

/** Names a namespace may take here (the real rules are undocumented; wide enough for any use). */
const NAMESPACE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$/;
/** The account's (only) user, as `created_by`: an identifier-shaped hash. */
const LOCAL_USER = createHash("md5").update("local@tenantry.invalid").digest("hex");

/**
 * @typedef {{ namespace_id: string, namespace_name: string, created_on: string, created_by: string,
 *   modified_on: string, modified_by: string, scripts: Record<string, import("./workers.mjs").Script> }} Namespace
 */

export const namespaceNotFound = (name) => new ApiError(404, 10007, `Dispatch namespace ${JSON.stringify(name)} not found`);

/** The internal name (in workerd) of script `script` of namespace `namespace`: never an account script's. */
export function namespaceWorkerName(namespace, script) {
  // Account script names cannot hold ':' (cloud/workers.mjs SCRIPT_NAME).
  return `dispatch:${namespace}:${script}`;
}

/** A namespace as the API shows it. */
export function namespaceInfo(/** @type {Namespace} */ ns) {
  return {
    namespace_id: ns.namespace_id,
    namespace_name: ns.namespace_name,
    created_on: ns.created_on,
    created_by: ns.created_by,
    modified_on: ns.modified_on,
    modified_by: ns.modified_by,
    script_count: Object.keys(ns.scripts).length,
    trusted_workers: false,
  };
}

/** The dispatch namespaces of the account, kept in the state file with their scripts. */
export class Namespaces {
  /** @param {import("./state.mjs").State} state */
  constructor(state) {
    this.state = state;
  }

  /** @returns {Record<string, Namespace>} */
  get all() {
    return this.state.data.namespaces;
  }

  /** @returns {Namespace | undefined} */
  find(name) {
    return Object.hasOwn(this.all, name) ? this.all[name] : undefined;
  }

  /** @returns {Namespace} */
  require(name) {
    const ns = this.find(name);
    if (!ns) throw namespaceNotFound(name);
    return ns;
  }

  list() {
    const items = Object.values(this.all).map(namespaceInfo);
    return { result: items, result_info: { page: 1, per_page: items.length, count: items.length, total_count: items.length } };
  }

  /** `POST /dispatch/namespaces {name}`: the caller saves the state. */
  create(body) {
    const input = parseJson(body);
    const name = input?.name;
    if (typeof name !== "string" || !NAMESPACE_NAME.test(name))
      throw malformed("name must be 1-64 letters, digits, '-' or '_', starting with a letter, digit or '_'");
    if (this.find(name))
      throw new ApiError(
        400,
        10021,
        `A dispatch namespace named ${JSON.stringify(name)} already exists. Ensure it does not already exist.`,
      );
    const now = new Date().toISOString();
    /** @type {Namespace} */
    const ns = {
      namespace_id: randomUUID(),
      namespace_name: name,
      created_on: now,
      created_by: LOCAL_USER,
      modified_on: now,
      modified_by: LOCAL_USER,
      scripts: {},
    };
    this.all[name] = ns;
    return ns;
  }

  /**
   * Deletes a namespace with its scripts (the real API's behaviour for scripts left inside is
   * undocumented). Returns whether any script of it was running. The caller saves the state.
   */
  delete(name) {
    const ns = this.require(name);
    delete this.all[name];
    return Object.keys(ns.scripts).length > 0;
  }
}
