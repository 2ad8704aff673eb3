// Faults injected into a Worker's R2 bucket binding (cloud/r2-plugin.mjs), on a local cloud of
// its own (no tenantry Worker): a script with an `r2_bucket` binding uploaded through the local
// cloud, whose operations fail as R2's do while a rule for `r2.<op>` is set, and work when not.

import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, test } from "vitest";
import { LOCAL_TOKEN, startCloud, uploadScript } from "../cloud/stack.mjs";

let stateDir;
/** @type {Awaited<ReturnType<typeof startCloud>>} */
let cloud;

beforeAll(async () => {
  stateDir = await mkdtemp(path.join(os.tmpdir(), "tenantry-r2-faults-"));
  cloud = await startCloud({ stateDir, poolSize: 8, entry: "r2-user" });
}, 120_000);

afterAll(async () => {
  await cloud?.stop();
  await rm(stateDir, { recursive: true, force: true });
});

async function setFaults(rules) {
  const res = await fetch(`${cloud.cloudUrl}/__cloud/faults`, {
    method: rules.length ? "POST" : "DELETE",
    headers: { authorization: `Bearer ${LOCAL_TOKEN}` },
    body: rules.length ? JSON.stringify({ rules }) : undefined,
  });
  expect(res.status).toBe(200);
}

describe("R2 binding faults", () => {
  afterEach(() => setFaults([]));

  /** A Worker with R2 binding BUCKET: `PUT /k` stores the body, `GET /k` reads it, `?op=list|head|delete`. */
  const SOURCE = `export default { async fetch(req, env) {
    const url = new URL(req.url);
    const key = url.pathname.slice(1);
    const op = url.searchParams.get("op") ?? (req.method === "PUT" ? "put" : "get");
    try {
      if (op === "put") { await env.BUCKET.put(key, await req.text()); return new Response("stored"); }
      if (op === "get") { const o = await env.BUCKET.get(key); return new Response(o ? await o.text() : "missing"); }
      if (op === "head") { const o = await env.BUCKET.head(key); return new Response(o ? String(o.size) : "missing"); }
      if (op === "list") { const l = await env.BUCKET.list({ prefix: key }); return new Response(l.objects.map((o) => o.key).join(",")); }
      await env.BUCKET.delete(key); return new Response("deleted");
    } catch (e) { return new Response(env.BUCKET.constructor.name + " threw: " + e.message, { status: 500 }); }
  } };`;

  const send = async (pathAndQuery, init) => {
    const out = await cloud.runtime.dispatchTo("r2-user", `http://any${pathAndQuery}`, init);
    return { status: out.status, text: out.body.toString() };
  };

  beforeAll(async () => {
    await cloud.api("POST", "/r2/buckets", { name: "faulty-bucket" });
    const up = await uploadScript(cloud.cloudUrl, "/workers/scripts/r2-user", SOURCE, {
      bindings: [{ type: "r2_bucket", name: "BUCKET", bucket_name: "faulty-bucket" }],
    });
    expect(up.status, JSON.stringify(up.body)).toBe(200);
    await cloud.runtime.settled();
  }, 60_000);

  test("a put fails when a fault is set for r2.put and works when not; every operation can fail", async () => {
    expect(await send("/k1", { method: "PUT", body: "one" })).toEqual({ status: 200, text: "stored" });
    expect(await send("/k1")).toEqual({ status: 200, text: "one" });

    await setFaults([{ endpoint: "r2.put", kind: "error", times: 1 }]);
    const failed = await send("/k2", { method: "PUT", body: "two" });
    expect(failed).toEqual({ status: 500, text: "R2Bucket threw: put: We encountered an internal error. Please try again. (10001)" });
    expect(await send("/k2")).toEqual({ status: 200, text: "missing" }); // nothing was stored
    expect(await send("/k2", { method: "PUT", body: "two" })).toEqual({ status: 200, text: "stored" }); // the rule is spent

    // A lost answer: stored, but the caller sees an error.
    await setFaults([{ endpoint: "r2.put", kind: "lose_response", times: 1 }]);
    expect((await send("/k3", { method: "PUT", body: "three" })).text).toBe("R2Bucket threw: Network connection lost.");
    expect(await send("/k3")).toEqual({ status: 200, text: "three" });

    for (const op of ["get", "head", "list", "delete"]) {
      await setFaults([{ endpoint: `r2.${op}`, kind: "rate_limit", times: 1 }]);
      const out = await send(`/k1?op=${op}`);
      expect(out.text).toBe(`R2Bucket threw: ${op}: Reduce your concurrent request rate for the same object. (10058)`);
    }
    expect(await send("/k?op=list")).toEqual({ status: 200, text: "k1,k2,k3" });

    // "*" is every REST endpoint, not the bindings' operations.
    await setFaults([{ endpoint: "*", kind: "error" }]);
    expect(await send("/k1")).toEqual({ status: 200, text: "one" });
  });

  test("the fault check is cheap", async () => {
    const t0 = performance.now();
    for (let i = 0; i < 20; i++) await send("/k1?op=head");
    const perOp = (performance.now() - t0) / 20;
    expect(perOp).toBeLessThan(50);
  });
});
