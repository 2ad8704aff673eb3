// The main Worker's side of a binding host (see host.mjs): an object with the D1Database API
// (prepare / bind / first / all / run / raw, batch) whose statements run on a tenant's binding on
// its host, one call of the host's `sql` method (JS RPC) per call, or `POST /sql` where the host
// or the dispatcher has no RPC. workers-rs wraps it as a `D1Database`, so tenant code runs
// unchanged whether the tenant's binding is on the main Worker or on a host.
//
// Errors are D1's shape (an Error whose message starts with `D1` and whose `cause` is an Error):
// `D1_ERROR: <message>` for a statement the database refused, `D1_NOT_BOUND: ...` when the host
// does not hold the binding, `D1_UNREACHABLE: ...` when the host could not be reached.

/** @param {string} kind @param {string} message */
const d1Error = (kind, message) => new Error(`${kind}: ${message}`, { cause: new Error(`${kind}: ${message}`) });

class HostDatabase {
  /**
   * @param {{ fetch: (url: string, init: object) => Promise<Response>, sql?: (binding: string, statements: object[]) => Promise<any> }} fetcher
   *   the host's fetcher (its `sql` is the host's RPC method)
   * @param {string} host
   * @param {string} binding
   */
  constructor(fetcher, host, binding) {
    this.fetcher = fetcher;
    this.host = host;
    this.binding = binding;
  }

  /** @param {string} sql */
  prepare(sql) {
    return new HostStatement(this, sql, []);
  }

  /** @param {HostStatement[]} statements */
  async batch(statements) {
    return this.send(statements);
  }

  /** @param {HostStatement[]} statements */
  async send(statements) {
    const payload = statements.map((s) => ({ sql: s.sql, params: s.params }));
    if (!noRpcUntil.has(this.host) || noRpcUntil.get(this.host) < Date.now()) {
      let answer;
      try {
        answer = await this.fetcher.sql(this.binding, payload);
      } catch (e) {
        if (!rpcMissing(e)) throw d1Error("D1_UNREACHABLE", `binding host ${this.host}: ${e instanceof Error ? e.message : e}`);
        // A host (or a dispatcher) without the RPC method: HTTP for a while, then try again.
        noRpcUntil.set(this.host, Date.now() + NO_RPC_MS);
      }
      if (answer !== undefined) return this.answer(answer, 200);
    }
    let response;
    try {
      response = await this.fetcher.fetch("https://host/sql", {
        method: "POST",
        body: JSON.stringify({ binding: this.binding, statements: payload }),
      });
    } catch (e) {
      throw d1Error("D1_UNREACHABLE", `binding host ${this.host}: ${e instanceof Error ? e.message : e}`);
    }
    let answer;
    try {
      answer = await response.json();
    } catch {
      throw d1Error("D1_UNREACHABLE", `binding host ${this.host} answered HTTP ${response.status}`);
    }
    return this.answer(answer, response.status);
  }

  /**
   * D1's results from the host's answer (RPC, or HTTP with its status), or D1's kind of error.
   * @param {any} answer @param {number} status
   */
  answer(answer, status) {
    if (status === 200 && Array.isArray(answer?.results)) {
      // host-2 answers D1's meta; a host-1 host still being replaced, its `changes` only.
      return answer.results.map((/** @type {any} */ r) => ({ results: r.rows, success: true, meta: r.meta ?? { changes: r.changes } }));
    }
    if ((status === 404 || status === 200) && answer?.error === "not_bound") {
      throw d1Error("D1_NOT_BOUND", `binding host ${this.host} does not hold ${this.binding}`);
    }
    if ((status === 400 || answer?.refused) && typeof answer?.error === "string") throw d1Error("D1_ERROR", answer.error);
    throw d1Error("D1_UNREACHABLE", `binding host ${this.host} answered HTTP ${status}`);
  }
}

/** How long a host without the RPC method is spoken to over HTTP before RPC is tried again. */
const NO_RPC_MS = 30_000;
/** @type {Map<string, number>} host -> until when it is spoken to over HTTP */
const noRpcUntil = new Map();

/**
 * Does `e` say the host has no RPC method (older host code, or a dispatcher that carries only
 * fetch), as opposed to a failure of the call itself?
 * @param {unknown} e
 */
function rpcMissing(e) {
  const text = e instanceof Error ? e.message : String(e);
  return /does not implement|is not a function|RPC|not supported/i.test(text) && !/Worker not found/.test(text);
}

class HostStatement {
  /** @param {HostDatabase} db @param {string} sql @param {unknown[]} params */
  constructor(db, sql, params) {
    this.db = db;
    this.sql = sql;
    this.params = params;
  }

  /** @param {...unknown} params */
  bind(...params) {
    return new HostStatement(this.db, this.sql, params);
  }

  async all() {
    const [result] = await this.db.send([this]);
    return result;
  }

  async run() {
    return this.all();
  }

  /** @param {string} [column] */
  async first(column) {
    const { results } = await this.all();
    const row = results[0];
    if (row === undefined) return null;
    return column === undefined ? row : row[column];
  }

  /** @param {{ columnNames?: boolean }} [options] */
  async raw(options) {
    const { results } = await this.all();
    const rows = results.map((r) => Object.values(r));
    return options?.columnNames ? [Object.keys(results[0] ?? {}), ...rows] : rows;
  }
}

/**
 * A D1Database-like handle on tenant binding `binding` of host `host`.
 * @param {any} fetcher @param {string} host @param {string} binding
 */
export function hostDatabase(fetcher, host, binding) {
  return new HostDatabase(fetcher, host, binding);
}
