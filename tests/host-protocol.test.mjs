// The protocol between the main Worker and a binding host (host/client.mjs, host/host.mjs), and
// the meter every tenant database goes through (src/edge/meter.mjs), on a workerd of their own:
// statements through a host answer what the same statements on a D1 binding of the Worker itself
// answer (rows, D1's errors, the rollback of a failed batch, the meta metering reads), over JS RPC;
// a host without the RPC method (host-1) is served over HTTP; a binding the host lacks is
// `D1_NOT_BOUND`, a host that cannot be reached `D1_UNREACHABLE`.

import { readFile } from "node:fs/promises";
import path from "node:path";
import { Miniflare, convertV4MiniflareOptions } from "miniflare";
import { afterAll, beforeAll, expect, test } from "vitest";
import { ROOT } from "../cloud/stack.mjs";

const DATE = "2026-11-01";

// The same statements on any D1Database-like handle, each step's value or its error, and what
// the meter counted for them.
const MAIN = `
import { hostDatabase } from "./client.mjs";
import { metered, newMeter } from "./meter.mjs";
const pick = (r) => ({ results: r.results, changes: r.meta?.changes });
async function ops(db) {
  const out = {};
  const step = async (name, f) => {
    try {
      out[name] = await f();
    } catch (e) {
      out[name] = { throws: e.message.replace(/^(D1_ERROR: )+/, "D1_ERROR: "), cause: Boolean(e.cause) };
    }
  };
  await step("create", async () => pick(await db.prepare("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)").run()));
  await step("clear", async () => pick(await db.prepare("DELETE FROM t").run()));
  await step("insert", async () => pick(await db.prepare("INSERT INTO t (id, v) VALUES (?, ?), (?, ?)").bind(1, "a", 2, null).run()));
  await step("all", async () => pick(await db.prepare("SELECT * FROM t ORDER BY id").all()));
  await step("first", () => db.prepare("SELECT * FROM t ORDER BY id").first());
  await step("first col", () => db.prepare("SELECT v FROM t ORDER BY id").first("v"));
  await step("first none", () => db.prepare("SELECT * FROM t WHERE id = ?").bind(99).first());
  await step("batch", async () => (await db.batch([db.prepare("UPDATE t SET v = ? WHERE id = 1").bind("z"), db.prepare("SELECT v FROM t WHERE id = 1")])).map(pick));
  await step("batch rolls back", async () => (await db.batch([db.prepare("UPDATE t SET v = 'y' WHERE id = 1"), db.prepare("SELECT * FROM nope")])).map(pick));
  await step("after rollback", () => db.prepare("SELECT v FROM t WHERE id = 1").first("v"));
  await step("error", () => db.prepare("SELECT * FROM nope").all());
  await step("constraint", () => db.prepare("INSERT INTO t (id) VALUES (1)").run());
  return out;
}
export default {
  async fetch(request, env) {
    const scenario = new URL(request.url).pathname.slice(1);
    const calls = { rpc: 0, http: 0 };
    const through = (f) => ({
      fetch: (url, init) => (calls.http++, f.fetch(url, init)),
      sql: (...args) => (calls.rpc++, f.sql(...args)),
    });
    const lost = { fetch: () => Promise.reject(new Error("Worker not found.")), sql: () => Promise.reject(new Error("Worker not found.")) };
    const dbs = {
      native: () => env.NATIVE,
      host: () => hostDatabase(through(env.HOST), "h", "TENANT_A"),
      old: () => hostDatabase(through(env.OLD_HOST), "old", "TENANT_A"),
      "not-bound": () => hostDatabase(through(env.HOST), "h", "TENANT_NOPE"),
      unreachable: () => hostDatabase(lost, "gone", "TENANT_A"),
    };
    const meter = newMeter();
    const out = await ops(metered(dbs[scenario](), meter));
    return Response.json({ out, calls, meter });
  },
};`;

// host-1: a plain module Worker, HTTP only, answering each result's \`changes\` alone.
const OLD_HOST = `
export default {
  async fetch(request, env) {
    const input = await request.json();
    const db = env[input.binding];
    if (!db) return Response.json({ error: "not_bound" }, { status: 404 });
    try {
      const prepared = input.statements.map((s) => db.prepare(s.sql).bind(...(s.params ?? [])));
      const results = prepared.length === 1 ? [await prepared[0].all()] : await db.batch(prepared);
      return Response.json({ results: results.map((r) => ({ rows: r.results ?? [], changes: r.meta?.changes ?? 0 })) });
    } catch (e) {
      return Response.json({ error: String(e.message).replace(/^D1_ERROR: /, "") }, { status: 400 });
    }
  },
};`;

/** @type {Miniflare} */
let mf;

beforeAll(async () => {
  const source = (file) => readFile(path.join(ROOT, file), "utf8");
  const [client, host, meter] = await Promise.all([source("host/client.mjs"), source("host/host.mjs"), source("src/edge/meter.mjs")]);
  mf = new Miniflare(
    convertV4MiniflareOptions({
      workers: [
        {
          name: "main",
          compatibilityDate: DATE,
          modules: [
            { type: "ESModule", path: "main.mjs", contents: MAIN },
            { type: "ESModule", path: "client.mjs", contents: client },
            { type: "ESModule", path: "meter.mjs", contents: meter },
          ],
          d1Databases: { NATIVE: "native-db" },
          serviceBindings: { HOST: "host", OLD_HOST: "old-host" },
        },
        {
          name: "host",
          compatibilityDate: DATE,
          modules: [{ type: "ESModule", path: "host.mjs", contents: host }],
          d1Databases: { TENANT_A: "a-db" },
        },
        {
          name: "old-host",
          compatibilityDate: DATE,
          modules: [{ type: "ESModule", path: "old.mjs", contents: OLD_HOST }],
          d1Databases: { TENANT_A: "old-db" },
        },
      ],
    }),
  );
  await mf.ready;
});

afterAll(() => mf?.dispose());

/** @returns {Promise<any>} */
const run = async (/** @type {string} */ scenario) => (await mf.dispatchFetch(`http://main/${scenario}`)).json();

test("statements through a host over RPC answer as a binding of the Worker itself, meta and metering included", async () => {
  const native = await run("native");
  const host = await run("host");
  expect(native.out.all).toEqual({
    results: [
      { id: 1, v: "a" },
      { id: 2, v: null },
    ],
    changes: 0,
  });
  expect(native.out["after rollback"]).toBe("z");
  expect(native.out.error.throws).toMatch(/^D1_ERROR: no such table: nope/);
  expect(host.out).toEqual(native.out);
  expect(host.calls).toEqual({ rpc: 12, http: 0 });
  // The meter sees the same rows through the host as on the binding itself.
  expect(host.meter.rows_written).toBe(native.meter.rows_written);
  expect(host.meter.rows_read).toBe(native.meter.rows_read);
  expect(host.meter.rows_written).toBeGreaterThanOrEqual(4);
  expect(host.meter.size_after).toBeGreaterThan(0);
});

test("a host-1 host (no RPC method) is served over HTTP, with the same rows", async () => {
  const first = await run("old");
  // The first call finds no RPC method and goes over HTTP; the rest go straight to HTTP (for
  // 30 s, then RPC is tried again).
  expect(first.calls).toEqual({ rpc: 1, http: 12 });
  // Run again (the database now has rows to clear, like the native one by now): same answers.
  const [native, old] = [await run("native"), await run("old")];
  expect(old.out).toEqual(native.out);
  expect(old.calls).toEqual({ rpc: 0, http: 12 });
  expect(old.meter.rows_written).toBe(0); // host-1 sends no rows_written: nothing to count
});

test("a binding the host lacks is D1_NOT_BOUND; a host that cannot be reached is D1_UNREACHABLE", async () => {
  const notBound = await run("not-bound");
  expect(notBound.out.all).toEqual({ throws: "D1_NOT_BOUND: binding host h does not hold TENANT_NOPE", cause: true });
  const gone = await run("unreachable");
  expect(gone.out.all.throws).toBe("D1_UNREACHABLE: binding host gone: Worker not found.");
});
