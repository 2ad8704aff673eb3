// D1 Time Travel in the local cloud, on a local cloud of its own (no tenantry Worker): bookmarks
// by time and their order, restores in place (and undoing one with its `previous_bookmark`), the
// restore limit, errors, a fault injected into a restore, and the real wrangler CLI's
// `d1 time-travel info|restore`.

import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, afterEach, beforeAll, describe, expect, test } from "vitest";
import { LOCAL_TOKEN, startCloud, wrangler } from "../cloud/stack.mjs";

let stateDir;
/** @type {Awaited<ReturnType<typeof startCloud>>} */
let cloud;

beforeAll(async () => {
  stateDir = await mkdtemp(path.join(os.tmpdir(), "tenantry-timetravel-"));
  cloud = await startCloud({ stateDir, poolSize: 8, entry: "none", timeTravelIntervalMs: 100 });
}, 120_000);

afterAll(async () => {
  await cloud?.stop();
  await rm(stateDir, { recursive: true, force: true });
});

/** A call answering `{ status, body, headers }` whatever the status. */
async function call(method, route, body) {
  const res = await cloud.api(method, route, body, { raw: true });
  return { status: res.status, headers: res.headers, body: /** @type {any} */ (await res.json()) };
}

/** Expects a failure envelope with `status` and `code`; returns the answer. */
async function failure(promise, status, code) {
  const answer = await promise;
  expect(answer.status, JSON.stringify(answer.body)).toBe(status);
  expect(answer.body).toMatchObject({ success: false, result: null });
  expect(answer.body.errors[0].code).toBe(code);
  return answer;
}

async function setFaults(rules) {
  const res = await fetch(`${cloud.cloudUrl}/__cloud/faults`, {
    method: rules.length ? "POST" : "DELETE",
    headers: { authorization: `Bearer ${LOCAL_TOKEN}` },
    body: rules.length ? JSON.stringify({ rules }) : undefined,
  });
  expect(res.status).toBe(200);
}

const newDb = async (name) => (await cloud.api("POST", "/d1/database", { name })).result.uuid;
const sql = async (id, text) => (await cloud.api("POST", `/d1/database/${id}/query`, { sql: text })).result;
const names = async (id) => (await sql(id, "SELECT name FROM t ORDER BY name"))[0].results.map((r) => r.name);
const tt = (id, what, query = "") => `/d1/database/${id}/time_travel/${what}${query}`;
const bookmark = async (id, query = "") => (await cloud.api("GET", tt(id, "bookmark", query))).result.bookmark;
const BOOKMARK = /^[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{32}$/;

describe("D1 Time Travel", () => {
  afterEach(() => setFaults([]));

  test("restore to a time: the rows written before it only; previous_bookmark undoes it; bookmarks sort in time order", async () => {
    const id = await newDb("tt-basic");
    const empty = await bookmark(id);
    expect(empty).toMatch(BOOKMARK);
    await sql(id, "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT); CREATE INDEX t_name ON t(name)");
    await sql(id, "INSERT INTO t (name) VALUES ('a'), ('b')");
    const first = await bookmark(id); // brings history up to date: the state with a, b
    await sleep(20);
    const between = new Date().toISOString();
    await sleep(20);
    await sql(id, "INSERT INTO t (name) VALUES ('c'); CREATE VIEW v AS SELECT name FROM t");
    // Left to the detector (100 ms here), then asked by time.
    await sleep(400);
    const later = await bookmark(id, `?timestamp=${encodeURIComponent(new Date().toISOString())}`);
    expect(await bookmark(id, `?timestamp=${encodeURIComponent(between)}`)).toBe(first);
    expect([later, empty, first].sort()).toEqual([empty, first, later]);
    expect(new Set([empty, first, later]).size).toBe(3);
    // Unix seconds are accepted too.
    expect(await bookmark(id, `?timestamp=${(Date.now() / 1000).toFixed(3)}`)).toBe(later);

    const restored = (await cloud.api("POST", tt(id, "restore", `?timestamp=${encodeURIComponent(between)}`))).result;
    expect(restored).toMatchObject({ previous_bookmark: later, message: expect.any(String) });
    expect(restored.bookmark).toMatch(BOOKMARK);
    expect(restored.bookmark > later).toBe(true);
    expect(await names(id)).toEqual(["a", "b"]);
    const objects = (
      await sql(id, "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' AND name NOT LIKE '_cf_%' ORDER BY name")
    )[0];
    expect(objects.results.map((r) => r.name)).toEqual(["t", "t_name"]);
    // The same database (id) keeps serving; AUTOINCREMENT carries on from the restored state.
    await sql(id, "INSERT INTO t (name) VALUES ('d')");
    expect((await sql(id, "SELECT id FROM t WHERE name = 'd'"))[0].results[0].id).toBe(3);

    const undone = (await cloud.api("POST", tt(id, "restore", `?bookmark=${restored.previous_bookmark}`))).result;
    expect(await names(id)).toEqual(["a", "b", "c"]);
    expect(undone.previous_bookmark > restored.bookmark).toBe(true);
    // List and get report the restored database.
    const got = (await cloud.api("GET", `/d1/database/${id}`)).result;
    expect(got).toMatchObject({ uuid: id, num_tables: 1 });
    expect((await cloud.api("GET", "/d1/database")).result.map((d) => d.uuid)).toContain(id);

    // Back to the empty database.
    await cloud.api("POST", tt(id, "restore", `?bookmark=${empty}`));
    expect((await cloud.api("GET", `/d1/database/${id}`)).result.num_tables).toBe(0);
  });

  test("the 11th restore within 10 minutes is refused (429, 7429, Retry-After)", async () => {
    const id = await newDb("tt-limit");
    await sql(id, "CREATE TABLE t (name TEXT)");
    const b = await bookmark(id);
    for (let i = 0; i < 10; i++) expect((await call("POST", tt(id, "restore", `?bookmark=${b}`))).status).toBe(200);
    const refused = await failure(call("POST", tt(id, "restore", `?bookmark=${b}`)), 429, 7429);
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThan(0);
    // Per database: another one still restores.
    const other = await newDb("tt-limit-other");
    expect((await call("POST", tt(other, "restore", `?bookmark=${await bookmark(other)}`))).status).toBe(200);
  });

  test("errors: unknown database (404, 7404), bad bookmark and timestamps (400, 7400), nothing to restore to", async () => {
    const id = await newDb("tt-errors");
    const unknown = "00000000-0000-4000-8000-000000000000";
    await failure(call("GET", tt(unknown, "bookmark")), 404, 7404);
    await failure(call("POST", tt(unknown, "restore", `?bookmark=${await bookmark(id)}`)), 404, 7404);
    await failure(call("POST", tt(id, "restore", "?bookmark=nope")), 400, 7400);
    await failure(
      call("POST", tt(id, "restore", `?bookmark=${"0".repeat(8)}-${"0".repeat(8)}-${"0".repeat(8)}-${"0".repeat(32)}`)),
      400,
      7400,
    );
    await failure(call("POST", tt(id, "restore")), 400, 7400);
    await failure(call("GET", tt(id, "bookmark", "?timestamp=yesterday")), 400, 7400);
    await failure(call("GET", tt(id, "bookmark", `?timestamp=${new Date(Date.now() + 60_000).toISOString()}`)), 400, 7400);
    await failure(call("GET", tt(id, "bookmark", `?timestamp=${new Date(Date.now() - 31 * 86_400_000).toISOString()}`)), 400, 7400);
    // Within retention but before the database existed.
    await failure(call("GET", tt(id, "bookmark", `?timestamp=${new Date(Date.now() - 86_400_000).toISOString()}`)), 400, 7400);
    // A deleted database's history goes with it.
    await cloud.api("DELETE", `/d1/database/${id}`);
    await failure(call("GET", tt(id, "bookmark")), 404, 7404);
  });

  test("faults: an injected error leaves the database as it was; a lost answer still restores", async () => {
    const id = await newDb("tt-faults");
    await sql(id, "CREATE TABLE t (name TEXT)");
    const before = await bookmark(id);
    await sql(id, "INSERT INTO t VALUES ('x')");
    await setFaults([{ endpoint: "d1.time_travel.restore", kind: "error", status: 503, times: 1 }]);
    await failure(call("POST", tt(id, "restore", `?bookmark=${before}`)), 503, 7500);
    expect(await names(id)).toEqual(["x"]);
    await setFaults([{ endpoint: "d1.time_travel.restore", kind: "lose_response", times: 1 }]);
    await expect(call("POST", tt(id, "restore", `?bookmark=${before}`))).rejects.toThrow();
    expect(await names(id)).toEqual([]);
    await setFaults([{ endpoint: "d1.time_travel.bookmark", kind: "rate_limit", retry_after: 3, times: 1 }]);
    const limited = await failure(call("GET", tt(id, "bookmark")), 429, 971);
    expect(limited.headers.get("retry-after")).toBe("3");
  });

  test("concurrent restores of one database run one at a time", async () => {
    const id = await newDb("tt-concurrent");
    await sql(id, "CREATE TABLE t (name TEXT)");
    const a = await bookmark(id);
    await sql(id, "INSERT INTO t VALUES ('a')");
    const b = await bookmark(id);
    const answers = await Promise.all([a, b, a, b].map((bm) => call("POST", tt(id, "restore", `?bookmark=${bm}`))));
    expect(answers.map((x) => x.status)).toEqual([200, 200, 200, 200]);
    // Each restore's previous state is the one the restore before it left.
    for (let i = 1; i < answers.length; i++)
      expect(answers[i].body.result.previous_bookmark >= answers[i - 1].body.result.bookmark).toBe(true);
    expect(await names(id)).toEqual(["a"]);
  });

  test("the real wrangler CLI: d1 time-travel info and restore", async () => {
    const id = await newDb("tt-wrangler");
    await sql(id, "CREATE TABLE t (name TEXT); INSERT INTO t VALUES ('kept')");
    const info = await wrangler(["d1", "time-travel", "info", "tt-wrangler", "--json"], cloud.cloudUrl);
    expect(info.code, info.stderr).toBe(0);
    const { bookmark: kept } = JSON.parse(info.stdout);
    expect(kept).toMatch(BOOKMARK);
    await sql(id, "INSERT INTO t VALUES ('dropped')");
    const out = await wrangler(["d1", "time-travel", "restore", "tt-wrangler", "--bookmark", kept, "--json"], cloud.cloudUrl);
    expect(out.code, out.stderr).toBe(0);
    expect(JSON.parse(out.stdout)).toMatchObject({
      bookmark: expect.stringMatching(BOOKMARK),
      previous_bookmark: expect.stringMatching(BOOKMARK),
    });
    expect(await names(id)).toEqual(["kept"]);
  }, 60_000);
});
