// A Miniflare plugin (loaded by Miniflare itself, through an `unsafeBindings` entry naming this
// file) that gives a Worker a Workers Rate Limiting binding answered inside the Worker's own
// isolate.
//
// Why not Miniflare's own: Miniflare 5 answers every `limit()` with a request to a Durable Object
// (a second isolate), which costs each request a cross-isolate round trip that the binding on
// Cloudflare does not have (there, counters are kept by the location and `limit()` does not wait
// on the network). tenantry calls `limit()` on every tenant request, so the benchmark would
// measure the simulator. This binding keeps its counters in the isolate, as Miniflare's earlier
// simulation did: fixed windows of the binding's period, one count per `limit()` per key, which
// is what Cloudflare documents for one location (counts are per location and approximate).
//
// What it emulates: an instance of a class named `Ratelimit` (workers-rs checks the
// constructor's name: `env.rate_limiter(name)`), whose `limit({ key })` resolves to
// `{ success }`; `key` must be a string, and options other than key, limit and period are refused,
// as Cloudflare's binding refuses them.

import { fileURLToPath } from "node:url";
import { boundBy, moduleExtension, pluginBinding } from "./plugin.mjs";

export const PLUGIN_NAME = "tenantry-ratelimit";
const MODULE_NAME = "tenantry-cloud:ratelimit";

const MODULE = `
const OPTIONS = ["key", "limit", "period"];
class Ratelimit {
  #limit;
  #period;
  #epoch = -1;
  #counts = new Map();
  constructor(env) {
    this.#limit = env.config.limit;
    this.#period = env.config.period;
  }
  async limit(options) {
    if (typeof options !== "object" || options === null) throw new Error("invalid rate limit options");
    const bad = Object.keys(options).filter((k) => !OPTIONS.includes(k));
    if (bad.length) throw new Error("bad rate limit options: [" + bad.join(",") + "]");
    const { key = "", limit = this.#limit, period = this.#period } = options;
    if (typeof key !== "string") throw new Error("invalid key: " + key);
    if (![10, 60].includes(period)) throw new Error("unsupported period: " + period);
    const epoch = Math.floor(Date.now() / (period * 1000));
    if (epoch !== this.#epoch) {
      this.#epoch = epoch;
      this.#counts.clear();
    }
    const count = (this.#counts.get(key) ?? 0) + 1;
    this.#counts.set(key, count);
    return { success: count <= limit };
  }
}
export default function (env) {
  return new Ratelimit(env);
}
`;

/**
 * The `unsafeBindings` entry (Miniflare v4-style Worker options) for one rate limit binding.
 * @param {string} name the binding's name
 * @param {{ limit: number, period: number }} simple
 */
export function ratelimitBinding(name, simple) {
  return pluginBinding(fileURLToPath(import.meta.url), PLUGIN_NAME, name, "ratelimit", { limit: simple.limit, period: simple.period });
}

const ours = boundBy(PLUGIN_NAME);

export const plugins = {
  [PLUGIN_NAME]: {
    getBindings(options) {
      return ours(options).map(([name, binding]) => ({
        name,
        wrapped: {
          moduleName: MODULE_NAME,
          innerBindings: [
            { name: "config", json: JSON.stringify({ limit: binding.dev.options.limit, period: binding.dev.options.period }) },
          ],
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
