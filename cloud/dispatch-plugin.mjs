// A Miniflare plugin (loaded by Miniflare itself, through an `unsafeBindings` entry naming this
// file) that gives a Worker a Workers for Platforms dispatch namespace binding running locally.
//
// Miniflare's own `dispatch-namespace` binding only proxies to a remote namespace on Cloudflare,
// and Miniflare 5 has no `wrappedBindings` option any more. A plugin can still declare a workerd
// *wrapped binding*: `env[NAME]` is whatever this file's small module returns for its inner
// bindings, and the inner bindings here are service bindings to every script of the namespace
// (under their internal names). So `env[NAME].get(script)` hands back a real Fetcher, with no
// hop through Node, and a script the binding holds no service binding for is unreachable.
//
// What the module emulates (Cloudflare's dispatcher):
// - the binding is an instance of a class named `DynamicDispatcher` (workers-rs checks the
//   constructor's name: `env.dynamic_dispatcher(name)` in worker 0.8);
// - `get(name, args?, options?)` never throws; for a script that is not in the namespace it
//   returns a Fetcher whose `fetch` rejects with "Worker not found." (Cloudflare's dispatch
//   example tests `e.message.startsWith("Worker not found")`; only that prefix is documented);
// - `args` and `options` (custom limits, outbound parameters) are accepted and ignored.

import { fileURLToPath } from "node:url";
import { boundBy, moduleExtension, pluginBinding } from "./plugin.mjs";

export const PLUGIN_NAME = "tenantry-dispatch-namespace";
const MODULE_NAME = "tenantry-cloud:dispatch-namespace";
const PREFIX = "script:";

const MODULE = `
const PREFIX = ${JSON.stringify(PREFIX)};
class MissingWorker {
  fetch() {
    return Promise.reject(new Error("Worker not found."));
  }
  connect() {
    throw new Error("Worker not found.");
  }
}
class DynamicDispatcher {
  #env;
  constructor(env) {
    this.#env = env;
  }
  get(name, args, options) {
    const fetcher = typeof name === "string" ? this.#env[PREFIX + name] : undefined;
    return fetcher ?? new MissingWorker();
  }
}
export default function (env) {
  return new DynamicDispatcher(env);
}
`;

/**
 * The `unsafeBindings` entry (Miniflare v4-style Worker options) for one dispatch namespace
 * binding. `scripts` maps each deployed script of the namespace to its internal Worker name.
 * @param {string} name the binding's name
 * @param {string} namespace
 * @param {Record<string, string>} scripts
 */
export function dispatchBinding(name, namespace, scripts) {
  return pluginBinding(fileURLToPath(import.meta.url), PLUGIN_NAME, name, "dispatch_namespace", { namespace, scripts });
}

const ours = boundBy(PLUGIN_NAME);

export const plugins = {
  [PLUGIN_NAME]: {
    getBindings(options) {
      return ours(options).map(([name, binding]) => ({
        name,
        wrapped: {
          moduleName: MODULE_NAME,
          innerBindings: Object.entries(binding.dev.options.scripts ?? {}).map(([script, worker]) => ({
            name: PREFIX + script,
            service: { name: `core:user:${worker}` },
          })),
        },
      }));
    },
    getNodeBindings() {
      return {};
    },
    getServices() {
      return [];
    },
    getExtensions: moduleExtension(ours, MODULE_NAME, MODULE),
  },
};
