// Provisions a tenant database through the local cloud's Cloudflare API, the way the Worker's
// lifecycle does it against the real API: find-or-create the database by name, apply the tenant
// migrations with the ledger (each migration and its ledger row in one atomic query), stamp the
// slug, then add the binding with a settings PATCH that inherits every other binding.
//
// Used by `npm run dev` to seed a demo tenant and by the end-to-end tests to set tenants up.

import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { ROOT, SCRIPT_NAME } from "./stack.mjs";

const LEDGER = `CREATE TABLE IF NOT EXISTS d1_migrations(
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT UNIQUE,
    applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL
)`;

/** The tenant migrations, in order: [{ name, sql }]. */
export function tenantMigrations() {
  const dir = path.join(ROOT, "migrations", "tenant");
  return readdirSync(dir)
    .filter((f) => f.endsWith(".sql"))
    .sort((a, b) => parseInt(a, 10) - parseInt(b, 10))
    .map((name) => ({ name, sql: readFileSync(path.join(dir, name), "utf8") }));
}

export const bindingName = (slug) => `TENANT_${slug.toUpperCase().replaceAll("-", "_")}`;

/**
 * @param {ReturnType<import("./stack.mjs").apiClient>} api
 * @param {string} slug
 * @param {{ prefix?: string, bind?: boolean }} [opts]
 * @returns {Promise<{ uuid: string, name: string, binding: string }>}
 */
export async function provisionTenant(api, slug, { prefix = "tenantry-", bind = true } = {}) {
  const name = `${prefix}${slug}`;
  const found = (await api("GET", `/d1/database?name=${encodeURIComponent(name)}&per_page=100`)).result.find((d) => d.name === name);
  const db = found ?? (await api("POST", "/d1/database", { name })).result;
  const query = (sql, params) => api("POST", `/d1/database/${db.uuid}/query`, params ? { sql, params } : { sql });

  await query(LEDGER);
  const applied = new Set((await query("SELECT name FROM d1_migrations ORDER BY id")).result[0].results.map((r) => r.name));
  for (const m of tenantMigrations()) {
    if (applied.has(m.name)) continue;
    await query(`${m.sql}\nINSERT INTO d1_migrations (name) VALUES ('${m.name.replaceAll("'", "''")}');`);
  }
  await query("INSERT INTO tenant_meta (key, value) VALUES ('slug', ?1) ON CONFLICT (key) DO UPDATE SET value = excluded.value", [slug]);

  const binding = bindingName(slug);
  if (bind) await setBindings(api, (bindings) => [...bindings.filter((b) => b.name !== binding), { type: "d1", name: binding, id: db.uuid }]);
  return { uuid: db.uuid, name, binding };
}

/**
 * Rewrites the Worker's bindings to `change(current)`. `current` lists every binding as
 * `{ type: "inherit", name }`, so whatever `change` keeps is kept unchanged (the PATCH replaces
 * the whole set).
 */
export async function setBindings(api, change) {
  const current = (await api("GET", `/workers/scripts/${SCRIPT_NAME}/settings`)).result.bindings;
  const next = change(current.map((b) => ({ type: "inherit", name: b.name })));
  return api("PATCH", `/workers/scripts/${SCRIPT_NAME}/settings`, { bindings: next }, { multipart: true });
}
