// Fault injection for reliability tests: rules that make chosen endpoints fail the ways the real
// Cloudflare API (and the network in front of it) can fail.
//
// A rule: { endpoint, kind, times?, probability?, status?, retry_after?, delay_ms? }
// - endpoint: "d1.create" | "d1.list" | "d1.get" | "d1.delete" | "d1.query" | "d1.raw" |
//   "d1.export" | "d1.import" | "scripts.settings.get" | "scripts.settings.patch" | "*" | any other
//   endpoint in ENDPOINTS (the Workers scripts API, dispatch namespaces, R2 buckets, D1 Time
//   Travel), or an operation of the Workers' R2 bucket bindings in BINDING_ENDPOINTS ("r2.put",
//   "r2.get", "r2.head", "r2.list", "r2.delete": see r2-plugin.mjs). "*" means every endpoint of
//   the REST API, not the bindings' operations: name those to fail them.
// - kind:
//   - "error": answer `status` (default 500) with a Cloudflare error envelope; nothing is done
//   - "rate_limit": answer 429 with `Retry-After: retry_after` (default 1) and code 971
//   - "delay": wait `delay_ms`, then carry on normally
//   - "timeout": hold the request `delay_ms` (default 30 000), then drop the connection; nothing is done
//   - "lose_response": do the operation, then drop the connection before answering
// - times: how many requests the rule hits before it is spent (default: unlimited)
// - probability: chance (0..1) that a matching request is hit (default 1), drawn from a seeded
//   generator so a run can be replayed (`seed` in POST /__cloud/faults)

export const ENDPOINTS = [
  "d1.create",
  "d1.list",
  "d1.get",
  "d1.delete",
  "d1.query",
  "d1.raw",
  "d1.export",
  "d1.import",
  "d1.time_travel.bookmark",
  "d1.time_travel.restore",
  "kv.namespaces.list",
  "r2.buckets.create",
  "r2.buckets.delete",
  "r2.buckets.get",
  "r2.buckets.list",
  "scripts.list",
  "scripts.upload",
  "scripts.delete",
  "scripts.settings.get",
  "scripts.settings.patch",
  "scripts.script-settings.get",
  "scripts.script-settings.patch",
  "scripts.versions.create",
  "scripts.versions.get",
  "scripts.versions.list",
  "scripts.deployments.create",
  "scripts.deployments.list",
  "scripts.secrets.list",
  "scripts.secrets.get",
  "scripts.secrets.put",
  "scripts.secrets.delete",
  "scripts.schedules.get",
  "scripts.schedules.put",
  "scripts.subdomain.get",
  "scripts.subdomain.post",
  "scripts.references",
  "workers.services.get",
  "workers.services.delete",
  "workers.subdomain.get",
  "workers.tails.by-consumer",
  "workers.durable_objects.list",
  "workers.workers.get",
  "dispatch.namespaces.list",
  "dispatch.namespaces.create",
  "dispatch.namespaces.get",
  "dispatch.namespaces.delete",
  "dispatch.scripts.list",
  "dispatch.scripts.upload",
  "dispatch.scripts.get",
  "dispatch.scripts.delete",
  "dispatch.scripts.settings.get",
  "dispatch.scripts.settings.patch",
];
/** Operations of the Workers' R2 bucket bindings (not REST endpoints: see r2-plugin.mjs). */
export const BINDING_ENDPOINTS = ["r2.put", "r2.get", "r2.head", "r2.list", "r2.delete"];
const KINDS = ["error", "rate_limit", "delay", "timeout", "lose_response"];

export class Faults {
  constructor() {
    this.rules = [];
    this.hits = {};
    this.setSeed(1);
  }

  setSeed(seed) {
    // mulberry32: small, fast, good enough to spread faults; seeded for replay.
    let a = seed >>> 0;
    this.random = () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  /** Validates and adds rules; returns an error message or null. */
  add(rules) {
    if (!Array.isArray(rules)) return "rules must be an array";
    for (const rule of rules) {
      if (!rule || typeof rule !== "object") return "each rule must be an object";
      if (rule.endpoint !== "*" && !ENDPOINTS.includes(rule.endpoint) && !BINDING_ENDPOINTS.includes(rule.endpoint))
        return `unknown endpoint ${JSON.stringify(rule.endpoint)}`;
      if (!KINDS.includes(rule.kind)) return `unknown kind ${JSON.stringify(rule.kind)}`;
      if (rule.times !== undefined && !(Number.isInteger(rule.times) && rule.times > 0)) return "times must be a positive integer";
      if (rule.probability !== undefined && !(rule.probability >= 0 && rule.probability <= 1)) return "probability must be within 0..1";
    }
    this.rules.push(...rules.map((r) => ({ ...r })));
    return null;
  }

  clear() {
    this.rules = [];
    this.hits = {};
  }

  /** The fault to apply to this request to `endpoint`, if any (and spends it). */
  pick(endpoint) {
    for (const rule of this.rules) {
      if (rule.endpoint === "*" ? BINDING_ENDPOINTS.includes(endpoint) : rule.endpoint !== endpoint) continue;
      if (rule.times === 0) continue;
      if (rule.probability !== undefined && this.random() >= rule.probability) continue;
      if (rule.times !== undefined) rule.times--;
      const key = `${endpoint}:${rule.kind}`;
      this.hits[key] = (this.hits[key] ?? 0) + 1;
      return rule;
    }
    return null;
  }
}
