// A client for the Worker's front door that names the host it asks for: Node's fetch cannot
// resolve `*.localhost`, so the request goes to 127.0.0.1 with a `Host` header (what a browser or
// curl sends for `http://acme.localhost:8787`).

import http from "node:http";

/**
 * Sends a request to `127.0.0.1:port` as if to `host` (e.g. `acme.localhost`).
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
          let json;
          try {
            json = JSON.parse(text);
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode, headers: res.headers, text, json });
        });
      },
    );
    req.on("error", reject);
    if (body !== undefined) req.write(typeof body === "string" ? body : JSON.stringify(body));
    req.end();
  });
}
