// A corpus of bad input against the admin and tenant APIs: malformed JSON, oversized bodies,
// wrong types, unicode and SQL-looking strings, invalid slugs and hosts. Every answer must be a
// JSON error with a 4xx status (never a 500), and valid-but-odd strings must round-trip intact.

import { beforeAll, expect, test } from "vitest";
import { admin, createTenant, request } from "../helpers.mjs";

let t;
beforeAll(async () => {
  t = await createTenant(undefined, { plan: "enterprise" });
});

const WEIRD = [
  "'; DROP TABLE projects; --",
  '" OR 1=1 --',
  "Robert'); DELETE FROM users WHERE ('1'='1",
  "ünïcödé ✓ 漢字 🚀",
  "\u202Eright-to-left",
  "line\nbreak\ttab",
  "%00%ff%",
  "<script>alert(1)</script>",
  "null",
  "0",
];
/** The corpus strings that are not valid slugs ("null" is one: four lowercase letters). */
const NOT_SLUGS = WEIRD.filter((w) => w !== "null");

const BAD_JSON = ["", "{", "[]", "null", "42", '"string"', '{"a":', "{'single': 'quotes'}", "\u0000", '{"name": "x"}}'];

test("bad input gets 4xx JSON errors, never a 500", { timeout: 120_000 }, async () => {
  let cases = 0;
  const problems = [];
  const expect4xx = (label, res) => {
    cases++;
    const json = /^application\/json/.test(res.headers["content-type"] ?? res.headers.get?.("content-type") ?? "");
    if (res.status < 400 || res.status >= 500) problems.push(`${label}: ${res.status} ${res.text.slice(0, 120)}`);
    else if (!json || typeof res.json?.error?.code !== "string") problems.push(`${label}: not a JSON error: ${res.text.slice(0, 120)}`);
  };
  const host = `${t.slug}.localhost`;
  const auth = { authorization: `Bearer ${t.token}` };

  // Malformed JSON bodies, to every endpoint that takes one.
  const tenantWrites = [
    ["POST", "/api/users"],
    ["PATCH", "/api/users/1"],
    ["POST", "/api/projects"],
    ["POST", "/api/auth/login"],
  ];
  for (const body of BAD_JSON) {
    for (const [method, path] of tenantWrites)
      expect4xx(`${method} ${path} ${JSON.stringify(body)}`, await request(host, path, { method, body, headers: auth }));
    expect4xx(`admin create ${JSON.stringify(body)}`, await admin("POST", "/v1/tenants", body));
    expect4xx(`admin patch ${JSON.stringify(body)}`, await admin("PATCH", `/v1/tenants/${t.slug}`, body));
  }

  // Oversized bodies.
  const huge = JSON.stringify({ name: "x".repeat(70 * 1024) });
  expect4xx("oversized project", await request(host, "/api/projects", { method: "POST", body: huge, headers: auth }));
  expect4xx("oversized login", await request(host, "/api/auth/login", { method: "POST", body: huge }));
  expect4xx("oversized admin", await admin("POST", "/v1/tenants", huge));

  // Wrong types in every field.
  for (const value of [1, true, null, [], {}, ["x"], { a: 1 }, 1.5, -1]) {
    expect4xx(
      `project name ${JSON.stringify(value)}`,
      await request(host, "/api/projects", { method: "POST", body: { name: value }, headers: auth }),
    );
    expect4xx(
      `user email ${JSON.stringify(value)}`,
      await request(host, "/api/users", { method: "POST", body: { email: value, password: "long enough password" }, headers: auth }),
    );
    expect4xx(
      `user role ${JSON.stringify(value)}`,
      await request(host, "/api/users", {
        method: "POST",
        body: { email: "ok@x.test", password: "long enough password", role: value },
        headers: auth,
      }),
    );
    expect4xx(
      `login ${JSON.stringify(value)}`,
      await request(host, "/api/auth/login", { method: "POST", body: { email: value, password: value } }),
    );
    expect4xx(
      `admin slug ${JSON.stringify(value)}`,
      await admin("POST", "/v1/tenants", { slug: value, name: "n", admin: { email: "a@b.co", password: "long enough password" } }),
    );
    expect4xx(`admin patch plan ${JSON.stringify(value)}`, await admin("PATCH", `/v1/tenants/${t.slug}`, { plan: value }));
  }

  // SQL-looking and unicode strings where they are not valid: as slugs, ids, emails, params.
  for (const weird of NOT_SLUGS) {
    const enc = encodeURIComponent(weird);
    expect4xx(
      `admin slug ${weird}`,
      await admin("POST", "/v1/tenants", { slug: weird, name: "n", admin: { email: "a@b.co", password: "long enough password" } }),
    );
    expect4xx(`admin get ${weird}`, await admin("GET", `/v1/tenants/${enc}`));
    expect4xx(`project id ${weird}`, await request(host, `/api/projects/${enc}`, { headers: auth }));
    expect4xx(`user id ${weird}`, await request(host, `/api/users/${enc}`, { headers: auth }));
    expect4xx(`cursor ${weird}`, await request(host, `/api/projects?cursor=${enc}`, { headers: auth }));
    expect4xx(`limit ${weird}`, await request(host, `/api/projects?limit=${enc}`, { headers: auth }));
    expect4xx(`status filter ${weird}`, await admin("GET", `/v1/tenants?status=${enc}`));
    expect4xx(
      `email ${weird}`,
      await request(host, "/api/users", { method: "POST", body: { email: weird, password: "long enough password" }, headers: auth }),
    );
    expect4xx(
      `X-Tenant-ID ${weird}`,
      await request("localhost", "/api/me", { headers: { "x-tenant-id": encodeURIComponent(weird), ...auth } }),
    );
  }

  // Invalid hosts and slugs.
  for (const badHost of [
    "ab.localhost",
    "-x.localhost",
    "a--b.localhost",
    "x_y.localhost",
    "a.b.localhost",
    "evil.com",
    "localhost.evil.com",
    "127.0.0.1",
    `${"a".repeat(41)}.localhost`,
  ]) {
    expect4xx(`host ${badHost}`, await request(badHost, "/api/me", { headers: auth }));
  }
  for (const path of [
    "/api/users/0",
    "/api/users/-1",
    "/api/users/1.5",
    "/api/users/99999999999999999999",
    "/api/projects/0x10",
    "/api/../v1/tenants",
    "/api/projects/1/extra",
  ]) {
    expect4xx(`path ${path}`, await request(host, path, { headers: auth }));
  }

  // Odd but valid strings are stored and returned exactly, and break nothing.
  for (const weird of WEIRD) {
    const res = await request(host, "/api/projects", { method: "POST", body: { name: `n ${weird}`, description: weird }, headers: auth });
    cases++;
    expect(res.status, res.text).toBe(201);
    expect(res.json.project.description).toBe(weird);
    const back = await request(host, `/api/projects/${res.json.project.id}`, { headers: auth });
    expect(back.json.project.description).toBe(weird);
  }
  const count = await request(host, "/api/projects?limit=100", { headers: auth });
  expect(count.json.projects.length).toBe(WEIRD.length);
  expect((await request("localhost", "/healthz")).status).toBe(200);

  console.log(`bad-input corpus: ${cases} cases, ${problems.length} problems`);
  expect(problems).toEqual([]);
});
