// The R2 bucket endpoints of the local cloud (create, list, get, delete): enough for wrangler's
// binding checks at deploy time (`GET /r2/buckets/{name}`, and a create when it is missing) and
// for `wrangler r2 bucket create|list|delete`. Objects live in Miniflare's R2, reached through
// the Workers' r2_bucket bindings; the local cloud only keeps the registry.

import { ApiError, malformed, parseJson } from "./http.mjs";

/** R2 bucket names: 3 to 63 lowercase letters, digits and `-`, not starting or ending with `-`. */
export const BUCKET_NAME = /^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$/;
const notFound = () => new ApiError(404, 10006, "The specified bucket does not exist.");

export class R2 {
  /** @param {{ state: import("./state.mjs").State }} opts */
  constructor({ state }) {
    this.state = state;
    this.state.data.buckets ??= {};
  }

  /**
   * The routes under `/accounts/{id}/r2/buckets`: `p` is the path after it.
   * @returns {{ endpoint: string, run: (r: any) => any } | null}
   */
  route(method, p, on) {
    if (p.length === 0) {
      return method === "POST" ? on("r2.buckets.create", "POST", (r) => this.#create(r)) : on("r2.buckets.list", "GET", () => this.#list());
    }
    if (p.length !== 1) return null;
    return method === "DELETE"
      ? on("r2.buckets.delete", "DELETE", () => this.#delete(p[0]))
      : on("r2.buckets.get", "GET", () => ({ result: this.#bucket(p[0]) }));
  }

  #bucket(name) {
    const bucket = this.state.data.buckets[name];
    if (!bucket) throw notFound();
    return bucket;
  }

  #list() {
    return { result: { buckets: Object.values(this.state.data.buckets).sort((a, b) => a.name.localeCompare(b.name)) } };
  }

  async #create({ body }) {
    const input = parseJson(body);
    if (typeof input?.name !== "string" || !BUCKET_NAME.test(input.name)) {
      throw new ApiError(400, 10005, "The specified bucket name is not valid: 3 to 63 lowercase letters, digits and '-'");
    }
    if (input.storageClass !== undefined && !["Standard", "InfrequentAccess"].includes(input.storageClass))
      throw malformed("storageClass must be Standard or InfrequentAccess");
    if (this.state.data.buckets[input.name])
      throw new ApiError(409, 10004, "The bucket you tried to create already exists, and you own it.");
    const bucket = {
      name: input.name,
      creation_date: new Date().toISOString(),
      location: "WNAM",
      storage_class: input.storageClass ?? "Standard",
    };
    this.state.data.buckets[input.name] = bucket;
    await this.state.save();
    return { result: bucket };
  }

  async #delete(name) {
    this.#bucket(name);
    delete this.state.data.buckets[name];
    await this.state.save();
    return { result: {} };
  }
}
