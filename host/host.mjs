// A binding host: a Worker script in tenantry's dispatch namespace that holds tenant D1 bindings
// (up to HOST_CAPACITY) and runs SQL on them for the main Worker, which reaches it through its
// dispatch-namespace binding only (a namespace script has no route and no workers.dev address).
// tenantry uploads this file itself (the control plane's `Lifecycle::ensure_host`); it holds no
// tenant logic, so a code deploy of tenantry never has to reach the hosts.
//
// Protocol, two ways to the same thing:
// - JS RPC (host-2): `sql(binding, statements)`, statements `[{sql, params}]` run as one batch
//   (one transaction), answers `{results: [{rows, meta}]}` (`meta`: D1's changes, rows_read,
//   rows_written and size_after), `{error: "not_bound"}` when this host does not hold the binding,
//   or `{error: "<D1's message>", refused: true}` when the database refused a statement. No JSON
//   is made or read on the way: the arguments and the answer are structured-cloned.
// - HTTP (host-1, kept for a main Worker whose dispatcher carries no RPC): `POST /sql` with
//   `{"binding", "statements"}` answers the same `{"results"}` (200), `{"error": "not_bound"}`
//   (404) or `{"error"}` (400). `GET /` answers `{"code", "bindings"}`.

import { WorkerEntrypoint } from "cloudflare:workers";

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

/**
 * Runs `statements` on tenant binding `name` of `env`.
 * @param {Record<string, any>} env
 * @param {unknown} name
 * @param {unknown} statements
 * @returns {Promise<{ results: { rows: unknown[], meta: object }[] } | { error: string, refused?: boolean }>}
 */
async function run(env, name, statements) {
  const db = typeof name === "string" && name.startsWith("TENANT_") ? env[name] : undefined;
  if (!db || typeof db.prepare !== "function") return { error: "not_bound" };
  if (!Array.isArray(statements) || statements.length === 0) return { error: "no statements", refused: true };
  try {
    const prepared = statements.map((s) => db.prepare(s.sql).bind(...(s.params ?? [])));
    const results = prepared.length === 1 ? [await prepared[0].all()] : await db.batch(prepared);
    return { results: results.map((r) => ({ rows: r.results ?? [], meta: metaOf(r.meta) })) };
  } catch (e) {
    return { error: message(e), refused: true };
  }
}

export default class Host extends WorkerEntrypoint {
  /**
   * The main Worker's statements, over JS RPC.
   * @param {string} binding
   * @param {{ sql: string, params?: unknown[] }[]} statements
   */
  sql(binding, statements) {
    return run(this.env, binding, statements);
  }

  /** @param {Request} request */
  async fetch(request) {
    const url = new URL(request.url);
    if (request.method === "GET" && url.pathname === "/") {
      const bindings = Object.keys(this.env).filter((k) => k.startsWith("TENANT_")).length;
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
    const answer = await run(this.env, input?.binding, input?.statements);
    if ("results" in answer) return Response.json(answer);
    return Response.json({ error: answer.error }, { status: answer.refused ? 400 : 404 });
  }
}
