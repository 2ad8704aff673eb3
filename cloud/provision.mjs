// Helpers the dev script and the end-to-end tests share around tenants: the tenant migrations
// as files, and rewriting the Worker's binding set through the local cloud's settings API.
// (Tenants themselves are created through the Worker's admin API, as in production.)

import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { HOSTS_NAMESPACE, ROOT, SCRIPT_NAME } from "./stack.mjs";

/** The tenant migrations, in order: [{ name, sql }]. */
export function tenantMigrations() {
  const dir = path.join(ROOT, "migrations", "tenant");
  return readdirSync(dir)
    .filter((f) => f.endsWith(".sql"))
    .sort((a, b) => parseInt(a, 10) - parseInt(b, 10))
    .map((name) => ({ name, sql: readFileSync(path.join(dir, name), "utf8") }));
}

/**
 * Rewrites the Worker's bindings to `change(current)`. `current` lists every binding as
 * `{ type: "inherit", name }`, so whatever `change` keeps is kept unchanged (the PATCH replaces
 * the whole set).
 */
export async function setBindings(api, change, host = undefined) {
  const route = settingsRoute(host);
  const current = (await api("GET", route)).result.bindings;
  const next = change(current.map((b) => ({ type: "inherit", name: b.name })));
  return api("PATCH", route, { bindings: next }, { multipart: true });
}

/** The settings route of the main Worker, or of binding host `host`. */
export function settingsRoute(host = undefined) {
  return host ? `/workers/dispatch/namespaces/${HOSTS_NAMESPACE}/scripts/${host}/settings` : `/workers/scripts/${SCRIPT_NAME}/settings`;
}

/**
 * Every tenant D1 binding of the account, wherever it is: `[{ script, name, id }]`, `script` being
 * `"main"` for the main Worker or the binding host's name.
 */
export async function tenantBindings(api) {
  const hosts = (await api("GET", `/workers/dispatch/namespaces/${HOSTS_NAMESPACE}/scripts`).catch(() => ({ result: [] }))).result;
  const out = [];
  for (const script of [undefined, ...hosts.map((h) => h.script?.id ?? h.id)]) {
    const bindings = (await api("GET", settingsRoute(script))).result.bindings;
    for (const b of bindings)
      if (b.type === "d1" && b.name.startsWith("TENANT_")) out.push({ script: script ?? "main", name: b.name, id: b.id });
  }
  return out;
}

/**
 * What the newest tenant migration adds, in file order: the tables, indexes, views and triggers it
 * creates (`{ kind, name }`) and the columns it adds (`{ kind: "column", table, name }`).
 * @returns {({ kind: "table" | "index" | "view" | "trigger", name: string } | { kind: "column", table: string, name: string })[]}
 */
export function newestMigrationAdds() {
  const newest = tenantMigrations().at(-1);
  const pattern =
    /^\s*(?:CREATE\s+(?:UNIQUE\s+)?(TABLE|INDEX|VIEW|TRIGGER)\s+(?:IF\s+NOT\s+EXISTS\s+)?["`]?(\w+)|ALTER\s+TABLE\s+["`]?(\w+)["`]?\s+ADD\s+(?:COLUMN\s+)?["`]?(\w+))/gim;
  return [...newest.sql.matchAll(pattern)].map(([, kind, name, table, column]) =>
    kind
      ? { kind: /** @type {"table" | "index" | "view" | "trigger"} */ (kind.toLowerCase()), name }
      : { kind: /** @type {"column"} */ ("column"), table, name: column },
  );
}

/**
 * The SQL that puts a tenant database back at the version before the newest tenant migration,
 * as if that migration had just shipped: undoes what it adds, last first (drops the tables,
 * indexes, views and triggers it creates, and the columns it adds) and removes its ledger row.
 * (Tenant migrations only add; one that changes existing objects otherwise would need its own
 * undo here.)
 */
export function rollBackNewestSql() {
  const newest = tenantMigrations().at(-1);
  const drops = newestMigrationAdds()
    .map((added) =>
      added.kind === "column"
        ? `ALTER TABLE ${added.table} DROP COLUMN ${added.name};`
        : `DROP ${added.kind.toUpperCase()} IF EXISTS ${added.name};`,
    )
    .reverse();
  return `${drops.join(" ")} DELETE FROM d1_migrations WHERE name = '${newest.name}'`;
}
