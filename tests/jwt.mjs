// Minting tokens in the tests, the way the Worker does (core/token.rs), to build expired,
// tampered and forged ones. The key of tenant t is HMAC-SHA256(master secret, "tenantry/jwt/v1/" + t).

import { createHmac } from "node:crypto";

const b64 = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");

/**
 * `masterKey` is `kid:secret`; `header` adds fields to the token's header (e.g. `crit`).
 * @param {string} masterKey
 * @param {Record<string, any>} claims
 * @param {{ alg?: string, kid?: string, sign?: boolean, header?: Record<string, unknown> }} [opts]
 */
export function mint(masterKey, claims, { alg = "HS256", kid, sign = true, header: extra = {} } = {}) {
  const [defaultKid, ...rest] = masterKey.split(":");
  const secret = rest.join(":");
  const header = b64({ alg, kid: kid ?? defaultKid, typ: "JWT", ...extra });
  const payload = b64(claims);
  if (!sign) return `${header}.${payload}.`;
  const key = createHmac("sha256", secret).update(`tenantry/jwt/v1/${claims.tenant}`).digest();
  const signature = createHmac("sha256", key).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

/** The token with its payload edited and its signature kept. */
export function tamper(token, edit) {
  const [header, payload, signature] = token.split(".");
  const claims = JSON.parse(Buffer.from(payload, "base64url").toString());
  edit(claims);
  return `${header}.${b64(claims)}.${signature}`;
}

export function decode(token) {
  return JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString());
}
