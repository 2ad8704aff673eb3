// Clients of the Worker for the tests, the dev script and the benchmark: one that names the host
// it asks for (Node's fetch cannot resolve `*.localhost`, so the request goes to 127.0.0.1 with a
// `Host` header, what a browser or curl sends for `http://acme.localhost:8787`), and one for the
// admin API.

import http from "node:http";

/**
 * Sends a request to `127.0.0.1:port` as if to `host` (e.g. `acme.localhost`).
 * @param {number} port
 * @param {string} host
 * @param {string} pathname
 * @param {{ method?: string, headers?: Record<string, string>, body?: unknown }} [opts] `body` is sent as JSON unless a string
 * @returns {Promise<{ status: number, headers: Record<string, string>, text: string, json: any }>}
 */
export function hostRequest(port, host, pathname, { method = "GET", headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: "127.0.0.1", port, path: pathname, method, headers: { host: `${host}:${port}`, ...headers } },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          // Every header this Worker sends is single-valued.
          resolve({ status: res.statusCode, headers: /** @type {Record<string, string>} */ (res.headers), text, json: parseJson(text) });
        });
      },
    );
    req.on("error", reject);
    if (body !== undefined) req.write(typeof body === "string" ? body : JSON.stringify(body));
    req.end();
  });
}

/**
 * A client of the Worker's admin API at `url` (the apex), with the bearer `token`. Calls resolve
 * with `{ status, headers, text, json }` whatever the status; `body` is sent as JSON unless it is
 * a string already.
 */
export function adminClient(url, token) {
  return async (method, path, body, { token: as = token, headers = {} } = {}) => {
    const res = await fetch(`${url}${path}`, {
      method,
      headers: { authorization: `Bearer ${as}`, ...(body === undefined ? {} : { "content-type": "application/json" }), ...headers },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, headers: res.headers, text, json: parseJson(text) };
  };
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
