// A Miniflare plugin (loaded by Miniflare itself, through an `unsafeBindings` entry naming this
// file) that gives a Worker an R2 bucket binding into which the local cloud can inject faults.
//
// Miniflare's R2 is real (objects persist under `<persist>/r2`) but nothing can make it fail. Like
// dispatch-plugin.mjs, this declares a workerd *wrapped binding*: `env[NAME]` is what the small
// module below returns for its inner bindings, here the real R2 bucket binding (built by
// Miniflare's own R2 plugin, so objects live where they always did) and the address of the local
// cloud's `GET /__cloud/r2-faults`. Before each `put`, `get`, `head`, `list` and `delete`, the
// wrapper asks that endpoint what to do; the local cloud answers from its fault rules (endpoints
// `r2.put`, `r2.get`, `r2.head`, `r2.list`, `r2.delete`, see faults.mjs) with `ok`, an error to
// throw, or "do it, then throw" (a lost answer). It always asks: R2 serves backups, not the
// request path, and one loopback round trip costs about a millisecond. The other methods
// (multipart uploads) pass straight through.
//
// - The binding is an instance of a class named `R2Bucket` (workers-rs checks the constructor's
//   name: `env.bucket(name)` in worker 0.8, `EnvBinding::TYPE_NAME`), and what its methods
//   resolve with comes from the real binding unchanged (R2Object, R2ObjectBody, R2Objects).
// - Injected errors read like R2's, `<op>: <message> (<code>)`: "put: We encountered an internal
//   error. Please try again. (10001)" (10001 and its message: Miniflare's R2 `InternalError`);
//   for `rate_limit`, "(10058)" "Reduce your concurrent request rate for the same object." (our
//   choice: Miniflare has no such error); a timed-out or lost answer is workerd's "Network
//   connection lost.".
// - When the local cloud cannot be reached the operation goes ahead (no fault).

import { R2_PLUGIN } from "miniflare";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { boundBy, moduleExtension, pluginBinding } from "./plugin.mjs";

export const PLUGIN_NAME = "tenantry-r2-faults";
const MODULE_NAME = "tenantry-cloud:r2-bucket";
/** The operations a fault can hit, each the endpoint `r2.<op>`. */
export const R2_OPS = ["put", "get", "head", "list", "delete"];

const MODULE = `
class R2Bucket {
  #inner;
  #bucket;
  #url;
  #token;
  constructor(env) {
    this.#inner = env.inner;
    this.#bucket = env.bucket;
    this.#url = env.faultsUrl;
    this.#token = env.token;
  }
  async #ask(op, key) {
    const url = new URL(this.#url);
    url.searchParams.set("op", op);
    url.searchParams.set("bucket", this.#bucket);
    if (typeof key === "string") url.searchParams.set("key", key);
    try {
      const res = await fetch(url, { headers: { authorization: "Bearer " + this.#token } });
      const body = await res.json();
      return body?.result ?? { action: "ok" };
    } catch {
      return { action: "ok" };
    }
  }
  async #run(op, key, call) {
    const answer = await this.#ask(op, key);
    if (answer.action === "error") throw new Error(answer.message);
    const out = await call();
    if (answer.action === "lose_response") throw new Error(answer.message);
    return out;
  }
  head(key) {
    return this.#run("head", key, () => this.#inner.head(key));
  }
  get(key, options) {
    return this.#run("get", key, () => this.#inner.get(key, options));
  }
  put(key, value, options) {
    return this.#run("put", key, () => this.#inner.put(key, value, options));
  }
  delete(keys) {
    return this.#run("delete", Array.isArray(keys) ? keys.join(",") : keys, () => this.#inner.delete(keys));
  }
  list(options) {
    return this.#run("list", options?.prefix, () => this.#inner.list(options));
  }
  createMultipartUpload(key, options) {
    return this.#inner.createMultipartUpload(key, options);
  }
  resumeMultipartUpload(key, uploadId) {
    return this.#inner.resumeMultipartUpload(key, uploadId);
  }
}
export default function (env) {
  return new R2Bucket(env);
}
`;

/**
 * The `unsafeBindings` entry (Miniflare v4-style Worker options) for one R2 bucket binding whose
 * operations ask `faults.url` first.
 * @param {string} name the binding's name
 * @param {string} bucket the bucket's name
 * @param {{ url: string, token: string }} faults the local cloud's `/__cloud/r2-faults` and its token
 */
export function r2Binding(name, bucket, faults) {
  return pluginBinding(fileURLToPath(import.meta.url), PLUGIN_NAME, name, "r2_bucket", {
    bucket,
    faultsUrl: faults.url,
    token: faults.token,
  });
}

/**
 * What the local cloud answers the wrapper for operation `op` hit by `fault` (a rule of
 * faults.mjs, or null): `{ action: "ok" | "error" | "lose_response", message? }`, after the
 * rule's delay for `delay` and `timeout`.
 * @param {string} op
 * @param {{ kind: string, delay_ms?: number } | null} fault
 */
export async function r2FaultAnswer(op, fault) {
  const lost = "Network connection lost.";
  switch (fault?.kind) {
    case undefined:
      return { action: "ok" };
    case "error":
      return { action: "error", message: `${op}: We encountered an internal error. Please try again. (10001)` };
    case "rate_limit":
      return { action: "error", message: `${op}: Reduce your concurrent request rate for the same object. (10058)` };
    case "delay":
      await sleep(fault.delay_ms ?? 30_000);
      return { action: "ok" };
    case "timeout":
      await sleep(fault.delay_ms ?? 30_000);
      return { action: "error", message: lost };
    case "lose_response":
      return { action: "lose_response", message: lost };
    default:
      return { action: "ok" };
  }
}

const ours = boundBy(PLUGIN_NAME);

/** The worker's options as Miniflare's R2 plugin would see them with plain bindings to our buckets. */
function asPlainR2(options) {
  const env = Object.fromEntries(ours(options).map(([name, b]) => [name, { type: "r2", name: b.dev.options.bucket }]));
  return { ...options, config: { ...options.config, env } };
}

export const plugins = {
  [PLUGIN_NAME]: {
    async getBindings(options, sharedOptions, workerIndex) {
      const mine = ours(options);
      if (mine.length === 0) return [];
      // Typed `void | Binding[]`: Miniflare's R2 plugin always returns the list.
      const plain = /** @type {{ name: string }[]} */ (await R2_PLUGIN.getBindings(asPlainR2(options), sharedOptions, workerIndex));
      const inner = new Map(plain.map((b) => [b.name, b]));
      return mine.map(([name, binding]) => ({
        name,
        wrapped: {
          moduleName: MODULE_NAME,
          innerBindings: [
            { ...inner.get(name), name: "inner" },
            { name: "bucket", text: binding.dev.options.bucket },
            { name: "faultsUrl", text: binding.dev.options.faultsUrl },
            { name: "token", text: binding.dev.options.token },
          ],
        },
      }));
    },
    getNodeBindings() {
      return {};
    },
    /** The R2 storage services, as Miniflare's R2 plugin declares them for plain bindings. */
    async getServices(args) {
      if (ours(args.options).length === 0) return [];
      return R2_PLUGIN.getServices({ ...args, options: asPlainR2(args.options) });
    },
    getExtensions: moduleExtension(ours, MODULE_NAME, MODULE),
  },
};
