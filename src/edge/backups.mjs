// Backups as streams: a tenant database's export goes from D1's download URL into R2 without the
// Worker ever holding it (a Worker has 128 MB of memory; a D1 database may hold 10 GB), hashed
// (SHA-256 and MD5) and its rows counted on the way; then it is read back from R2 and hashed
// again. A restore's import streams it from R2 to D1's upload URL the same way.
// Called from Rust (`edge::R2Backups`).

/** Rows per table of a SQL dump, counted as it streams by: statements starting `INSERT INTO`. */
class RowCounter {
  constructor() {
    /** @type {Record<string, number>} */
    this.rows = {};
    this.quote = ""; // the quote character we are inside, if any
    this.head = ""; // the start of the current statement (up to 200 characters)
    this.inStatement = false;
  }

  /** @param {string} text */
  push(text) {
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (this.quote) {
        if (c === this.quote) this.quote = "";
        if (this.head.length < 200) this.head += c;
        continue;
      }
      if (c === ";") {
        this.end();
        continue;
      }
      if (!this.inStatement && (c === " " || c === "\n" || c === "\r" || c === "\t")) continue;
      this.inStatement = true;
      if (c === "'" || c === '"' || c === "`") this.quote = c;
      if (this.head.length < 200) this.head += c;
    }
  }

  end() {
    const m = /^(INSERT\s+INTO|CREATE\s+TABLE(?:\s+IF\s+NOT\s+EXISTS)?)\s+(?:"((?:[^"]|"")*)"|`([^`]*)`|\[([^\]]*)\]|([^\s(]+))/i.exec(
      this.head,
    );
    if (m) {
      const table = (m[2] ?? "").replace(/""/g, '"') || m[3] || m[4] || m[5];
      if (table && !table.startsWith("_cf_") && !table.startsWith("sqlite_")) {
        this.rows[table] = (this.rows[table] ?? 0) + (/^INSERT/i.test(m[1]) ? 1 : 0);
      }
    }
    this.head = "";
    this.inStatement = false;
  }
}

/** The Workers runtime's own stream classes (not in Node's types). */
const workers = /** @type {any} */ (globalThis);

const hex = (/** @type {ArrayBuffer} */ buf) => [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, "0")).join("");

/**
 * Streams the export at `url` into object `key` of `bucket`, then reads it back.
 * @param {any} bucket an R2 bucket binding
 * @param {string} url D1's signed download URL
 * @param {string} key
 * @param {Record<string, string>} metadata
 * @returns {Promise<{ bytes: number, sha256: string, md5: string, rows: Record<string, number> }>}
 */
export async function storeExport(bucket, url, key, metadata) {
  const res = await fetch(url);
  if (!res.ok || !res.body) throw new Error(`the export's download answered HTTP ${res.status}`);
  const length = Number(res.headers.get("content-length") ?? NaN);
  const [toR2, toHash] = res.body.tee();
  const sha = new workers.crypto.DigestStream("SHA-256");
  const md5 = new workers.crypto.DigestStream("MD5");
  const counter = new RowCounter();
  const hashing = (async () => {
    const shaWriter = sha.getWriter();
    const md5Writer = md5.getWriter();
    const decoder = new TextDecoder();
    let bytes = 0;
    const reader = toHash.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      bytes += value.byteLength;
      counter.push(decoder.decode(value, { stream: true }));
      await Promise.all([shaWriter.write(value), md5Writer.write(value)]);
    }
    counter.push(decoder.decode());
    if (counter.inStatement) counter.end();
    await Promise.all([shaWriter.close(), md5Writer.close()]);
    return { bytes, sha256: hex(await sha.digest), md5: hex(await md5.digest) };
  })();
  // R2 needs the length of a streamed body up front; without one the body is read whole.
  const body = Number.isFinite(length) ? toR2.pipeThrough(new workers.FixedLengthStream(length)) : await new Response(toR2).arrayBuffer();
  const [, digest] = await Promise.all([bucket.put(key, body, { customMetadata: metadata }), hashing]);
  if (Number.isFinite(length) && digest.bytes !== length) throw new Error(`the export was cut short: ${digest.bytes} of ${length} bytes`);
  // Verified: the object reads back whole, with the checksum of what was downloaded.
  const stored = await bucket.get(key);
  if (!stored) throw new Error(`backup object ${key} is not readable yet`);
  const check = new workers.crypto.DigestStream("SHA-256");
  await stored.body.pipeTo(check);
  const readBack = hex(await check.digest);
  if (stored.size !== digest.bytes || readBack !== digest.sha256) throw new Error(`backup object ${key} does not match the export`);
  return { ...digest, rows: counter.rows };
}

/**
 * Streams object `key` of `bucket` to D1's import upload URL. Throws when the object is missing
 * (message starting `missing:`) or the upload is refused.
 * @param {any} bucket
 * @param {string} key
 * @param {string} uploadUrl
 */
export async function uploadObject(bucket, key, uploadUrl) {
  const object = await bucket.get(key);
  if (!object) throw new Error(`missing: backup object ${key}`);
  const res = await fetch(uploadUrl, { method: "PUT", body: object.body.pipeThrough(new workers.FixedLengthStream(object.size)) });
  if (!res.ok) throw new Error(`the import's upload answered HTTP ${res.status}`);
}

/**
 * A Response streaming object `key` of `bucket` (null when it is missing).
 * @param {any} bucket
 * @param {string} key
 */
export async function objectResponse(bucket, key) {
  const object = await bucket.get(key);
  if (!object) return null;
  return new Response(object.body, { headers: { "content-length": String(object.size) } });
}
