// A binding host: a Worker script in tenantry's dispatch namespace that holds tenant D1 bindings
// (up to HOST_CAPACITY) and runs SQL on them for the main Worker, which reaches it through its
// dispatch-namespace binding only (a namespace script has no route and no workers.dev address).
// tenantry uploads this file itself (the control plane's `Lifecycle::ensure_host`); it holds no
// tenant logic, so a code deploy of tenantry never has to reach the hosts.
//
// Protocol: `POST /sql` with `{"binding": "TENANT_ACME", "statements": [{"sql", "params"}]}` runs
// the statements as one batch (one transaction) and answers `{"results": [{"rows", "meta"}]}`
// (`meta`: D1's changes, rows_read, rows_written and size_after; host-1 answered `changes` only);
// an unknown binding answers 404 `{"error": "not_bound"}`, a refused statement 400
// `{"error": "<D1's message>"}`. `GET /` answers `{"code", "bindings"}`.

const CODE = "host-2";

/** @param {unknown} e */
const message = (e) => String(e instanceof Error ? e.message : e).replace(/^D1_ERROR: /, "");

/** The parts of D1's `meta` the main Worker uses (its writes' effects and its metering). */
const metaOf = (/** @type {any} */ meta) => ({
  changes: meta?.changes ?? 0,
  rows_read: meta?.rows_read ?? 0,
  rows_written: meta?.rows_written ?? 0,
  ...(typeof meta?.size_after === "number" ? { size_after: meta.size_after } : {}),
});

export default {
  /**
   * @param {Request} request
   * @param {Record<string, any>} env
   */
  async fetch(request, env) {
    const url = new URL(request.url);
    if (request.method === "GET" && url.pathname === "/") {
      const bindings = Object.keys(env).filter((k) => k.startsWith("TENANT_")).length;
      return Response.json({ code: CODE, bindings });
    }
    if (request.method !== "POST" || url.pathname !== "/sql") {
      return Response.json({ error: "not_found" }, { status: 404 });
    }
    let input;
    try {
      input = await request.json();
    } catch {
      return Response.json({ error: "the body is not JSON" }, { status: 400 });
    }
    const name = input?.binding;
    const db = typeof name === "string" && name.startsWith("TENANT_") ? env[name] : undefined;
    if (!db || typeof db.prepare !== "function") {
      return Response.json({ error: "not_bound" }, { status: 404 });
    }
    if (!Array.isArray(input.statements) || input.statements.length === 0) {
      return Response.json({ error: "no statements" }, { status: 400 });
    }
    try {
      const prepared = input.statements.map((s) => db.prepare(s.sql).bind(...(s.params ?? [])));
      const results = prepared.length === 1 ? [await prepared[0].all()] : await db.batch(prepared);
      return Response.json({ results: results.map((r) => ({ rows: r.results ?? [], meta: metaOf(r.meta) })) });
    } catch (e) {
      return Response.json({ error: message(e) }, { status: 400 });
    }
  },
};
