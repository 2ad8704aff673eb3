// `npm run deploy`: deploy the Worker without dropping tenant bindings.
//
// A plain `wrangler deploy` sends only the bindings in wrangler.toml, so it would drop every
// tenant binding added at run time. This script:
//   1. reads the tenants that should be bound from the control plane
//      (`wrangler d1 execute <control> --remote`),
//   2. writes a deploy config: wrangler.toml plus one [[d1_databases]] entry per tenant,
//   3. runs `wrangler deploy --config <that file>` (the build runs as usual),
//   4. if TENANTRY_URL and TENANTRY_ADMIN_TOKEN are set, asks the deployed Worker to reconcile
//      (`POST /v1/reconcile`), which also covers tenants created while the deploy ran.
// The cron reconciler would restore a dropped binding within 5 minutes anyway; this keeps the
// gap at zero.
//
// Needs CLOUDFLARE_API_TOKEN (and CLOUDFLARE_ACCOUNT_ID unless wrangler.toml's var is right).
// `--dry-run` prints the generated config and deploys nothing.

import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parse } from "smol-toml";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const dryRun = process.argv.includes("--dry-run");
const config = parse(readFileSync(path.join(ROOT, "wrangler.toml"), "utf8"));
const control = (config.d1_databases ?? []).find((d) => d.binding === "CONTROL_DB");
if (!control) throw new Error("wrangler.toml has no CONTROL_DB database");

function wrangler(args, { capture = false, cwd = ROOT } = {}) {
  const bin = path.join(ROOT, "node_modules", "wrangler", "bin", "wrangler.js");
  const out = spawnSync(process.execPath, [bin, ...args], {
    cwd,
    env: { ...process.env, WRANGLER_SEND_METRICS: "false" },
    stdio: capture ? ["ignore", "pipe", "inherit"] : "inherit",
    encoding: "utf8",
  });
  if (out.status !== 0) throw new Error(`wrangler ${args.join(" ")} failed (${out.status})`);
  return out.stdout;
}

const query = "SELECT binding_name, database_name, database_id FROM tenants WHERE bind_wanted = 1 AND database_id IS NOT NULL ORDER BY slug";
// Run outside the project so wrangler looks the control database up by name through the API
// (the same on Cloudflare and on the local cloud) instead of trusting a config file.
const result = JSON.parse(
  wrangler(["d1", "execute", control.database_name, "--remote", "--json", "--command", query], { capture: true, cwd: os.tmpdir() }),
);
const tenants = result.at(-1).results;

const deployConfig = {
  ...config,
  d1_databases: [
    ...config.d1_databases.map((d) => ({ ...d, migrations_dir: d.migrations_dir && path.join(ROOT, d.migrations_dir) })),
    ...tenants.map((t) => ({ binding: t.binding_name, database_name: t.database_name, database_id: t.database_id })),
  ],
  main: path.join(ROOT, config.main),
  build: config.build && { ...config.build, cwd: ROOT },
};
mkdirSync(path.join(ROOT, ".tenantry"), { recursive: true });
const file = path.join(ROOT, ".tenantry", "wrangler.deploy.json");
writeFileSync(file, JSON.stringify(deployConfig, null, 2));
console.log(`deploy config: ${file} (${tenants.length} tenant bindings kept)`);

if (dryRun) {
  console.log(JSON.stringify(deployConfig, null, 2));
  process.exit(0);
}
wrangler(["deploy", "--config", file]);

const url = process.env.TENANTRY_URL;
const token = process.env.TENANTRY_ADMIN_TOKEN;
if (url && token) {
  const res = await fetch(`${url.replace(/\/$/, "")}/v1/reconcile`, { method: "POST", headers: { authorization: `Bearer ${token}` } });
  console.log(`reconcile: ${res.status} ${await res.text()}`);
  if (!res.ok) process.exit(1);
} else {
  console.log("TENANTRY_URL / TENANTRY_ADMIN_TOKEN not set: the cron reconciler will check the bindings within 5 minutes.");
}
