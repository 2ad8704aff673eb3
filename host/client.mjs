// The main Worker's side of a binding host (see host.mjs): an object with the D1Database API
// (prepare / bind / first / all / run / raw, batch) whose statements run on a tenant's binding on
// its host, one `POST /sql` per call. workers-rs wraps it as a `D1Database`, so tenant code runs
// unchanged whether the tenant's binding is on the main Worker or on a host.
//
// Errors are D1's shape (an Error whose message starts with `D1` and whose `cause` is an Error):
// `D1_ERROR: <message>` for a statement the database refused, `D1_NOT_BOUND: ...` when the host
// does not hold the binding, `D1_UNREACHABLE: ...` when the host could not be reached.

/** @param {string} kind @param {string} message */
const d1Error = (kind, message) => new Error(`${kind}: ${message}`, { cause: new Error(`${kind}: ${message}`) });

class HostDatabase {
  /**
   * @param {{ fetch: (url: string, init: object) => Promise<Response> }} fetcher the host's fetcher
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
    let response;
    try {
      response = await this.fetcher.fetch("https://host/sql", {
        method: "POST",
        body: JSON.stringify({ binding: this.binding, statements: statements.map((s) => ({ sql: s.sql, params: s.params })) }),
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
    if (response.status === 200 && Array.isArray(answer?.results)) {
      // host-2 answers D1's meta; a host-1 host still being replaced, its `changes` only.
      return answer.results.map((r) => ({ results: r.rows, success: true, meta: r.meta ?? { changes: r.changes } }));
    }
    if (response.status === 404 && answer?.error === "not_bound") {
      throw d1Error("D1_NOT_BOUND", `binding host ${this.host} does not hold ${this.binding}`);
    }
    if (response.status === 400 && typeof answer?.error === "string") throw d1Error("D1_ERROR", answer.error);
    throw d1Error("D1_UNREACHABLE", `binding host ${this.host} answered HTTP ${response.status}`);
  }
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
