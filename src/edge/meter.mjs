// Metering of one request's use of a tenant database: a D1Database wrapper that adds up the
// `meta` of every result (rows read and written, and the database's size after the query) on a
// plain object the Rust side reads once the request is done (`edge::meter`). Every statement,
// batched or not, goes through it; nothing is written anywhere from here.

/**
 * @typedef {{ rows_read: number, rows_written: number, size_after: number }} Meter
 * size_after is -1 until a result reports it.
 */

/** @returns {Meter} */
export function newMeter() {
  return { rows_read: 0, rows_written: 0, size_after: -1 };
}

/** @param {Meter} meter */
export const rowsRead = (meter) => meter.rows_read;
/** @param {Meter} meter */
export const rowsWritten = (meter) => meter.rows_written;
/** @param {Meter} meter */
export const sizeAfter = (meter) => meter.size_after;

/**
 * Asks rate limit binding `name` of `env` for one more request for `key`: resolves to `true`
 * (allowed), `false` (limited) or the binding's error message; `null` when there is no such
 * binding. One call and one promise, where workers-rs's `RateLimiter` converts its argument and
 * its outcome through serde on every request.
 * @param {any} env @param {string} name @param {string} key
 * @returns {Promise<boolean | string> | null}
 */
export function rateLimit(env, name, key) {
  const binding = env[name];
  if (binding == null || typeof binding.limit !== "function") return null;
  return binding.limit({ key }).then(
    (/** @type {{ success?: unknown }} */ outcome) => outcome?.success !== false,
    (/** @type {unknown} */ e) => String(e instanceof Error ? e.message : e),
  );
}

/** @param {Meter} meter @param {any} result a D1 result */
function count(meter, result) {
  const meta = result?.meta;
  if (!meta) return;
  if (typeof meta.rows_read === "number") meter.rows_read += meta.rows_read;
  if (typeof meta.rows_written === "number") meter.rows_written += meta.rows_written;
  if (typeof meta.size_after === "number") meter.size_after = meta.size_after;
}

/** @param {Meter} meter @param {any} result a D1 result @returns {any} the result */
function counted(meter, result) {
  count(meter, result);
  return result;
}

class MeteredStatement {
  /** @param {any} inner a D1PreparedStatement @param {Meter} meter */
  constructor(inner, meter) {
    this.inner = inner;
    this.meter = meter;
  }

  /** @param {...unknown} params */
  bind(...params) {
    return new MeteredStatement(this.inner.bind(...params), this.meter);
  }

  // `then` on D1's own promise rather than an async function: one promise less per statement.
  all() {
    return this.inner.all().then((/** @type {any} */ result) => counted(this.meter, result));
  }

  run() {
    return this.inner.run().then((/** @type {any} */ result) => counted(this.meter, result));
  }

  /** As D1's `first`: the first row (or one column of it), or null; read through `all` for its meta. */
  async first(/** @type {string | undefined} */ column) {
    const { results } = await this.all();
    const row = results?.[0];
    if (row === undefined) return null;
    if (column == null) return row;
    if (!(column in row)) throw new Error(`D1_COLUMN_NOTFOUND: Column not found (${column})`);
    return row[column];
  }

  /** Rows as arrays; D1 gives no meta with them, so only `all`, `run`, `first` and batches count. */
  /** @param {{ columnNames?: boolean }} [options] */
  raw(options) {
    return this.inner.raw(options);
  }
}

class MeteredDatabase {
  /** @param {any} db a D1Database (or the binding host's stand-in) @param {Meter} meter */
  constructor(db, meter) {
    this.db = db;
    this.meter = meter;
  }

  /** @param {string} sql */
  prepare(sql) {
    return new MeteredStatement(this.db.prepare(sql), this.meter);
  }

  /** @param {MeteredStatement[]} statements */
  async batch(statements) {
    const results = await this.db.batch(statements.map((s) => s.inner));
    for (const result of results) count(this.meter, result);
    return results;
  }

  /** @param {string} sql */
  exec(sql) {
    return this.db.exec(sql);
  }

  dump() {
    return this.db.dump();
  }
}

/**
 * `db`, with every result's meta added to `meter`.
 * @param {any} db @param {Meter} meter
 */
export function metered(db, meter) {
  return new MeteredDatabase(db, meter);
}
