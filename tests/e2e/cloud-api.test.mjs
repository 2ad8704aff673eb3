// The local cloud follows the Cloudflare API: envelopes, status and error codes, pagination,
// query/raw/export, settings semantics, authentication, and injected faults.

import { afterEach, describe, expect, test } from "vitest";
import { api, freshSlug, setFaults, sql, stack } from "../helpers.mjs";

const raw = (method, route, body, opts = {}) => api(method, route, body, { ...opts, raw: true });
const expectFailure = async (responsePromise, status, code) => {
  const res = await responsePromise;
  const body = await res.json();
  expect(res.status).toBe(status);
  expect(body).toMatchObject({ success: false, result: null, messages: [] });
  expect(body.errors[0].code).toBe(code);
  expect(typeof body.errors[0].message).toBe("string");
  return { res, body };
};
const newDb = async () => (await api("POST", "/d1/database", { name: `db-${freshSlug("c")}` })).result;

describe("D1 databases", () => {
  test("create, get by id and by name, duplicate 7502, delete, 7404 after", async () => {
    const name = `db-${freshSlug("crud")}`;
    const created = await api("POST", "/d1/database", { name, primary_location_hint: "weur" });
    expect(created).toMatchObject({ success: true, errors: [], messages: [] });
    expect(created.result).toMatchObject({ name, version: "production", num_tables: 0 });
    expect(created.result.uuid).toMatch(/^[0-9a-f-]{36}$/);
    expect(typeof created.result.created_at).toBe("string");

    const byId = await api("GET", `/d1/database/${created.result.uuid}`);
    const byName = await api("GET", `/d1/database/${name}?fields=uuid%2Cname`);
    expect(byId.result.uuid).toBe(created.result.uuid);
    expect(byName.result.uuid).toBe(created.result.uuid);

    await expectFailure(raw("POST", "/d1/database", { name }), 400, 7502);
    await api("DELETE", `/d1/database/${created.result.uuid}`);
    await expectFailure(raw("GET", `/d1/database/${created.result.uuid}`), 404, 7404);
    await expectFailure(raw("DELETE", `/d1/database/${created.result.uuid}`), 404, 7404);
  });

  test("bad create bodies are 7400", async () => {
    await expectFailure(raw("POST", "/d1/database", { name: "has space" }), 400, 7400);
    await expectFailure(raw("POST", "/d1/database", {}), 400, 7400);
    await expectFailure(raw("POST", "/d1/database", { name: "ok-name", primary_location_hint: "mars" }), 400, 7400);
    const res = await fetch(`${stack.apiBase}/accounts/${stack.accountId}/d1/database`, {
      method: "POST",
      headers: { authorization: `Bearer ${stack.token}` },
      body: "{not json",
    });
    await expectFailure(Promise.resolve(res), 400, 7400);
  });

  test("list filters by name and paginates with result_info", async () => {
    const tag = freshSlug("list");
    for (let i = 0; i < 12; i++) await api("POST", "/d1/database", { name: `${tag}-${String(i).padStart(2, "0")}` });
    const page1 = await api("GET", `/d1/database?name=${tag}&per_page=10&page=1`);
    const page2 = await api("GET", `/d1/database?name=${tag}&per_page=10&page=2`);
    expect(page1.result).toHaveLength(10);
    expect(page2.result).toHaveLength(2);
    expect(page1.result_info).toEqual({ page: 1, per_page: 10, count: 10, total_count: 12 });
    expect(page2.result_info).toEqual({ page: 2, per_page: 10, count: 2, total_count: 12 });
    const all = [...page1.result, ...page2.result].map((d) => d.name);
    expect(new Set(all).size).toBe(12);
    await expectFailure(raw("GET", "/d1/database?per_page=5"), 400, 7400);
    await expectFailure(raw("GET", "/d1/database?page=0"), 400, 7400);
  });
});

describe("query and raw", () => {
  test("single, multi-statement, params, batch; one result per statement", async () => {
    const db = await newDb();
    const multi = await sql(
      db.uuid,
      "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t (v) VALUES ('a'); INSERT INTO t (v) VALUES ('b;c');",
    );
    expect(multi).toHaveLength(3);
    expect(multi.every((r) => r.success)).toBe(true);
    expect(multi[2].meta).toMatchObject({ changes: 1, last_row_id: 2 });

    const withParams = await sql(db.uuid, "SELECT v FROM t WHERE id = ?1", [2]);
    expect(withParams[0].results).toEqual([{ v: "b;c" }]);

    const batch = await api("POST", `/d1/database/${db.uuid}/query`, {
      batch: [{ sql: "INSERT INTO t (v) VALUES (?)", params: ["d"] }, { sql: "SELECT count(*) AS n FROM t" }],
    });
    expect(batch.result[1].results).toEqual([{ n: 3 }]);

    const rawOut = await api("POST", `/d1/database/${db.uuid}/raw`, { sql: "SELECT id, v FROM t ORDER BY id LIMIT 2" });
    expect(rawOut.result[0].results).toEqual({
      columns: ["id", "v"],
      rows: [
        [1, "a"],
        [2, "b;c"],
      ],
    });
  });

  test("a failing statement rolls the whole query back and answers 7500", async () => {
    const db = await newDb();
    await sql(db.uuid, "CREATE TABLE t (v TEXT NOT NULL)");
    const { body } = await expectFailure(
      raw("POST", `/d1/database/${db.uuid}/query`, { sql: "INSERT INTO t VALUES ('x'); INSERT INTO t VALUES (NULL);" }),
      400,
      7500,
    );
    expect(body.errors[0].message).toMatch(/NOT NULL/);
    expect((await sql(db.uuid, "SELECT count(*) AS n FROM t"))[0].results).toEqual([{ n: 0 }]);
    await expectFailure(raw("POST", `/d1/database/${db.uuid}/query`, { sql: "SELEC 1" }), 400, 7500);
    await expectFailure(raw("POST", `/d1/database/${db.uuid}/query`, { sql: "-- nothing" }), 400, 7500);
    await expectFailure(raw("POST", `/d1/database/${db.uuid}/query`, { sql: "SELECT 1; SELECT ?1", params: [1] }), 400, 7400);
    await expectFailure(raw("POST", `/d1/database/${db.uuid}/query`, { params: [] }), 400, 7400);
    await expectFailure(raw("POST", "/d1/database/00000000-0000-0000-0000-000000000000/query", { sql: "SELECT 1" }), 404, 7404);
  });

  test("a deleted database's data is gone", async () => {
    const db = await newDb();
    await sql(db.uuid, "CREATE TABLE secret (v TEXT); INSERT INTO secret VALUES ('s')");
    await api("DELETE", `/d1/database/${db.uuid}`);
    await expectFailure(raw("POST", `/d1/database/${db.uuid}/query`, { sql: "SELECT 1" }), 404, 7404);
  });
});

describe("export", () => {
  test("polling protocol yields a SQL dump that re-imports to the same data", async () => {
    const source = await newDb();
    await sql(source.uuid, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t (v) VALUES ('it''s'), ('two; three')");
    const first = await api("POST", `/d1/database/${source.uuid}/export`, { output_format: "polling" });
    expect(first.result).toMatchObject({ success: true, type: "export", status: "active" });
    let poll = first.result;
    for (let i = 0; poll.status !== "complete" && i < 10; i++) {
      poll = (await api("POST", `/d1/database/${source.uuid}/export`, { output_format: "polling", current_bookmark: poll.at_bookmark }))
        .result;
    }
    expect(poll.status).toBe("complete");
    const dump = await (await fetch(poll.result.signed_url)).text();
    expect(dump).toContain("CREATE TABLE t");

    const copy = await newDb();
    await sql(copy.uuid, dump);
    expect((await sql(copy.uuid, "SELECT v FROM t ORDER BY id"))[0].results).toEqual([{ v: "it's" }, { v: "two; three" }]);

    await expectFailure(raw("POST", `/d1/database/${source.uuid}/export`, { output_format: "file" }), 400, 7400);
    expect((await fetch(poll.result.signed_url.replace(/[0-9a-f]{48}/, "0".repeat(48)))).status).toBe(404);
  });
});

describe("script settings", () => {
  const settingsPatch = (settings, opts) => raw("PATCH", "/workers/scripts/tenantry/settings", settings, { multipart: true, ...opts });

  test("unknown script 10007; bad bindings 10021 (10057 for an inherit with nothing to inherit) and nothing changes", async () => {
    await expectFailure(raw("GET", "/workers/scripts/nope/settings"), 404, 10007);
    const before = (await api("GET", "/workers/scripts/tenantry/settings")).result.bindings;
    const inherit = before.map((b) => ({ type: "inherit", name: b.name }));
    for (const [bad, code] of [
      [[...inherit, { type: "d1", name: "X_DB", id: "00000000-0000-0000-0000-000000000000" }], 10021],
      [[...inherit, { type: "inherit", name: "NEVER_EXISTED" }], 10057],
      [[...inherit, { type: "d1", name: "APEX" }], 10021],
      [[...inherit, inherit[0]], 10021],
      [[...inherit, { type: "d1", name: "not-an-identifier", id: before.find((b) => b.type === "d1").id }], 10021],
      [[...inherit, { type: "queue", name: "Q", queue_name: "q" }], 10021],
    ]) {
      await expectFailure(settingsPatch({ bindings: bad }), 400, code);
    }
    expect((await api("GET", "/workers/scripts/tenantry/settings")).result.bindings).toEqual(before);
    const notMultipart = await raw("PATCH", "/workers/scripts/tenantry/settings", { bindings: inherit });
    expect(notMultipart.status).toBe(400);
  });

  test("secret values are never read back", async () => {
    const before = (await api("GET", "/workers/scripts/tenantry/settings")).result.bindings;
    const inherit = before.map((b) => ({ type: "inherit", name: b.name }));
    await api(
      "PATCH",
      "/workers/scripts/tenantry/settings",
      { bindings: [...inherit, { type: "secret_text", name: "SOME_SECRET", text: "hunter2" }] },
      { multipart: true },
    );
    const after = await (await raw("GET", "/workers/scripts/tenantry/settings")).text();
    expect(after).toContain("SOME_SECRET");
    expect(after).not.toContain("hunter2");
    await api("PATCH", "/workers/scripts/tenantry/settings", { bindings: inherit }, { multipart: true });
    expect((await api("GET", "/workers/scripts/tenantry/settings")).result.bindings).toEqual(before);
  });
});

describe("authentication", () => {
  const call = (headers, account = stack.accountId) => fetch(`${stack.apiBase}/accounts/${account}/d1/database`, { headers });
  test("missing, malformed and wrong tokens, and foreign accounts, are refused with the real shapes", async () => {
    await expectFailure(call({}), 401, 10001);
    await expectFailure(call({ authorization: "Basic abc" }), 400, 6003);
    await expectFailure(call({ authorization: "Bearer wrong-token" }), 403, 10000);
    await expectFailure(call({ authorization: `Bearer ${stack.token}` }, "f".repeat(32)), 403, 10000);
    await expectFailure(fetch(`${stack.cloudUrl}/__cloud/faults`), 401, 10001);
    await expectFailure(fetch(`${stack.apiBase}/nowhere`, { headers: { authorization: `Bearer ${stack.token}` } }), 404, 7003);
  });
});

describe("fault injection", () => {
  afterEach(() => setFaults([]));

  test("error, rate_limit with Retry-After, spent after `times`", async () => {
    await setFaults([
      { endpoint: "d1.list", kind: "error", status: 502, times: 1 },
      { endpoint: "d1.list", kind: "rate_limit", retry_after: 7, times: 1 },
    ]);
    await expectFailure(raw("GET", "/d1/database"), 502, 7500);
    const { res } = await expectFailure(raw("GET", "/d1/database"), 429, 971);
    expect(res.headers.get("retry-after")).toBe("7");
    expect((await raw("GET", "/d1/database")).status).toBe(200);
  });

  test("lose_response does the work and drops the answer; timeout does nothing and drops", async () => {
    const name = `db-${freshSlug("lost")}`;
    await setFaults([{ endpoint: "d1.create", kind: "lose_response", times: 1 }]);
    await expect(raw("POST", "/d1/database", { name })).rejects.toThrow();
    const found = (await api("GET", `/d1/database?name=${name}`)).result.filter((d) => d.name === name);
    expect(found).toHaveLength(1);

    const other = `db-${freshSlug("timeout")}`;
    await setFaults([{ endpoint: "d1.create", kind: "timeout", delay_ms: 200, times: 1 }]);
    await expect(raw("POST", "/d1/database", { name: other })).rejects.toThrow();
    expect((await api("GET", `/d1/database?name=${other}`)).result.filter((d) => d.name === other)).toHaveLength(0);
  });

  test("delay slows an answer down; probability is seeded; bad rules are refused", async () => {
    await setFaults([{ endpoint: "d1.list", kind: "delay", delay_ms: 300, times: 1 }]);
    const t0 = performance.now();
    expect((await raw("GET", "/d1/database")).status).toBe(200);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(290);

    const pattern = async () => {
      await setFaults([{ endpoint: "d1.list", kind: "error", probability: 0.5 }], 42);
      const out = [];
      for (let i = 0; i < 16; i++) out.push((await raw("GET", "/d1/database")).status);
      return out;
    };
    const a = await pattern();
    expect(await pattern()).toEqual(a);
    expect(a).toContain(500);
    expect(a).toContain(200);

    const headers = { authorization: `Bearer ${stack.token}` };
    for (const rules of [
      [{ endpoint: "d1.nope", kind: "error" }],
      [{ endpoint: "*", kind: "explode" }],
      [{ endpoint: "*", kind: "error", times: 0 }],
    ]) {
      const res = await fetch(`${stack.cloudUrl}/__cloud/faults`, { method: "POST", headers, body: JSON.stringify({ rules }) });
      expect(res.status).toBe(400);
    }
  });
});
