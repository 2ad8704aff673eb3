// `npm run deploy`: deploys the Worker with `wrangler deploy` without dropping tenant bindings.
//
// A plain `wrangler deploy` sends only the bindings in wrangler.toml, so it would drop every
// tenant binding added at run time (wrangler has no option to keep D1 bindings). This script:
//   1. reads the tenants that should be bound from the control plane
//      (`wrangler d1 execute <control> --remote`),
//   2. writes a deploy config: wrangler.toml plus one [[d1_databases]] entry per tenant, and one
//      `HOT_<database id>` entry per hot tenant (the HOT_TENANTS busiest tenants on hosts over the
//      last 7 days, by the usage metering, which the Worker then reads without the hop),
//   3. runs `wrangler deploy --config <that file>` (wrangler runs the build as usual),
//   4. asks the deployed Worker to reconcile (`POST /v1/reconcile`) when it knows where the Worker
//      is, which re-adds the binding of a tenant created while the deploy ran (its binding was
//      added to the version before ours and our version does not have it).
// Without step 4 the cron reconciler restores such a binding within one cron period.
//
//   npm run deploy                      to Cloudflare: needs CLOUDFLARE_API_TOKEN (and
//                                       CLOUDFLARE_ACCOUNT_ID unless wrangler.toml's var is
//                                       right); TENANTRY_URL and TENANTRY_ADMIN_TOKEN for step 4
//   npm run deploy -- --target FILE     to another account or API, described by FILE (what the
//                                       local stack writes: `.tenantry/dev/target.json`, so
//                                       `npm run deploy:local` deploys to `npm run dev`'s cloud)
//   npm run deploy -- --dry-run         prints the generated config, deploys nothing
//
// The local stack deploys itself through `deploy()` below, so the path users take to production
// is the one every local run and every test takes.

import { mkdir, readFile, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { parse } from "smol-toml";
import { adminClient } from "../cloud/client.mjs";
import { ROOT, runWrangler } from "./lib/wrangler.mjs";

// The tenants whose binding the main Worker must keep: those still served through it (the
// single-script layout, or not yet moved to a host) and those moved less than a grace period ago.
const TENANTS_SQL =
  "SELECT binding_name, database_name, database_id FROM tenants WHERE bind_wanted = 1 AND database_id IS NOT NULL " +
  "AND (on_host = 0 OR main_until > (julianday('now') - 2440587.5) * 86400000) ORDER BY slug";

/**
 * The hot tenants: the `limit` tenants on binding hosts with the most metered API calls over the
 * last 7 days (UTC days, today included), busiest first.
 * @param {number} limit
 */
export const hotTenantsSql = (limit) =>
  "SELECT t.slug, t.database_name, t.database_id, u.requests FROM tenants t JOIN (SELECT tenant_slug, SUM(requests) AS requests " +
  "FROM usage_daily WHERE day >= date('now', '-6 days') GROUP BY tenant_slug) u ON u.tenant_slug = t.slug " +
  `WHERE t.status = 'active' AND t.on_host = 1 AND t.database_id IS NOT NULL AND u.requests > 0 ORDER BY u.requests DESC, t.slug LIMIT ${limit}`;

/**
 * The main Worker's binding name for a hot tenant's database: `HOT_` and the id's hex digits,
 * lowercase (the Worker derives the same name, `BindingName::hot` in src/core/names.rs).
 * @param {string} databaseId
 */
export const hotBindingName = (databaseId) => `HOT_${databaseId.replace(/-/g, "").toLowerCase()}`;

/**
 * The parts of wrangler.toml this script reads or changes; the rest passes through.
 * @typedef {{
 *   main: string,
 *   build?: { command: string, cwd?: string },
 *   vars?: Record<string, string>,
 *   d1_databases: { binding: string, database_name: string, database_id: string, migrations_dir?: string }[],
 *   dispatch_namespaces?: { binding: string, namespace: string }[],
 *   [key: string]: unknown,
 * }} WranglerConfig
 */

/** wrangler.toml, parsed. */
export async function readWranglerToml() {
  return /** @type {WranglerConfig} */ (parse(await readFile(path.join(ROOT, "wrangler.toml"), "utf8")));
}

/**
 * Where and how to deploy, when not to Cloudflare with wrangler.toml as it stands.
 * @typedef {object} Target
 * @property {Record<string, string>} [env] environment for wrangler (CLOUDFLARE_API_BASE_URL, ...)
 * @property {Record<string, string>} [vars] vars that replace wrangler.toml's
 * @property {string} [control_database_id] the control plane's database id
 * @property {Record<string, string>} [secrets] secrets uploaded with the version
 * @property {boolean} [build] run wrangler.toml's build command (default true)
 * @property {string} [url] the deployed Worker's apex URL, for the reconcile call
 * @property {string} [admin_token] its admin token
 * @property {string} [work_dir] where the generated files go (default .tenantry/)
 */

/**
 * Deploys the Worker. Resolves with the version id that was deployed.
 * @param {object} opts
 * @param {Target} [opts.target]
 * @param {string} [opts.message] the deployment's message
 * @param {boolean} [opts.dryRun]
 * @param {(msg: string) => void} [opts.log]
 * @param {boolean} [opts.inherit] print wrangler's output as it comes
 */
export async function deploy({ target = {}, message, dryRun = false, log = console.log, inherit = false } = {}) {
  const config = await readWranglerToml();
  const control = (config.d1_databases ?? []).find((d) => d.binding === "CONTROL_DB");
  if (!control) throw new Error("wrangler.toml has no CONTROL_DB database");
  const env = target.env ?? {};

  /**
   * The rows `sql` reads from the control plane. Run outside the project so wrangler looks the
   * control database up by name through the API (the same on Cloudflare and on the local cloud)
   * instead of trusting a config file.
   * @param {string} sql @param {string} what what it reads, for the error
   */
  const readControl = async (sql, what) => {
    const query = await runWrangler(["d1", "execute", control.database_name, "--remote", "--json", "--command", sql], {
      env,
      cwd: os.tmpdir(),
    });
    if (query.code !== 0) throw new Error(`reading ${what} from ${control.database_name} failed:\n${query.stdout}${query.stderr}`);
    return JSON.parse(query.stdout).at(-1).results;
  };
  /** @type {{ binding_name: string, database_name: string, database_id: string }[]} */
  const tenants = await readControl(TENANTS_SQL, "the tenants");

  const vars = { ...(config.vars ?? {}), ...(target.vars ?? {}) };
  const hotLimit = Number(vars.HOT_TENANTS ?? 0);
  if (!Number.isInteger(hotLimit) || hotLimit < 0 || hotLimit > 1000) {
    throw new Error(`HOT_TENANTS must be a whole number from 0 to 1000, not ${JSON.stringify(vars.HOT_TENANTS)}`);
  }
  /** @type {{ slug: string, database_name: string, database_id: string, requests: number }[]} */
  const hot = hotLimit > 0 && vars.HOSTS_NAMESPACE ? await readControl(hotTenantsSql(hotLimit), "the hot tenants") : [];

  // The binding hosts' dispatch namespace, created once (the Worker's upload refuses a binding to
  // a namespace that does not exist).
  for (const ns of config.dispatch_namespaces ?? []) {
    const found = await runWrangler(["dispatch-namespace", "get", ns.namespace], { env, cwd: os.tmpdir() });
    if (found.code === 0) continue;
    const made = await runWrangler(["dispatch-namespace", "create", ns.namespace], { env, cwd: os.tmpdir() });
    if (made.code !== 0) throw new Error(`creating dispatch namespace ${ns.namespace} failed:\n${made.stdout}${made.stderr}`);
    log(`created dispatch namespace ${ns.namespace}`);
  }
  if (vars.HOSTS_NAMESPACE && !(config.dispatch_namespaces ?? []).some((ns) => ns.namespace === vars.HOSTS_NAMESPACE)) {
    throw new Error(`HOSTS_NAMESPACE is ${vars.HOSTS_NAMESPACE} but wrangler.toml binds no such [[dispatch_namespaces]]`);
  }

  const workDir = target.work_dir ?? path.join(ROOT, ".tenantry");
  const deployConfig = {
    ...config,
    vars,
    d1_databases: [
      ...config.d1_databases.map((d) => ({
        ...d,
        ...(d.binding === "CONTROL_DB" && target.control_database_id ? { database_id: target.control_database_id } : {}),
        migrations_dir: d.migrations_dir && path.join(ROOT, d.migrations_dir),
      })),
      ...tenants.map((t) => ({ binding: t.binding_name, database_name: t.database_name, database_id: t.database_id })),
      ...hot.map((t) => ({ binding: hotBindingName(t.database_id), database_name: t.database_name, database_id: t.database_id })),
    ],
    main: path.join(ROOT, config.main),
    build: target.build === false ? undefined : config.build && { ...config.build, cwd: ROOT },
  };
  if (!deployConfig.build) delete deployConfig.build;
  await mkdir(workDir, { recursive: true });
  const file = path.join(workDir, "wrangler.deploy.json");
  await writeFile(file, JSON.stringify(deployConfig, null, 2));
  log(
    `deploy config: ${file} (${tenants.length} tenant bindings kept, ${hot.length} hot tenants bound: ${hot.map((t) => t.slug).join(", ") || "none"})`,
  );
  if (dryRun) {
    log(JSON.stringify(deployConfig, null, 2));
    return null;
  }

  const args = ["deploy", "--config", file, ...(message ? ["--message", message] : [])];
  if (target.secrets && Object.keys(target.secrets).length) {
    const secretsFile = path.join(workDir, "secrets.json");
    await writeFile(secretsFile, JSON.stringify(target.secrets), { mode: 0o600 });
    args.push("--secrets-file", secretsFile);
  }
  const out = await runWrangler(args, { env, inherit });
  if (out.code !== 0) throw new Error(`wrangler deploy failed (${out.code}):\n${out.stdout}${out.stderr}`);
  const versionId = /Current Version ID: ([0-9a-f-]+)/.exec(out.stdout)?.[1] ?? null;
  log(`deployed version ${versionId}`);

  const url = target.url ?? process.env.TENANTRY_URL;
  const token = target.admin_token ?? process.env.TENANTRY_ADMIN_TOKEN;
  if (url && token) {
    const res = await adminClient(url.replace(/\/$/, ""), token)("POST", "/v1/reconcile");
    if (res.status !== 200) throw new Error(`reconcile after the deploy: ${res.status} ${res.text}`);
    log(`reconcile: ${res.status}`);
  } else {
    log("TENANTRY_URL / TENANTRY_ADMIN_TOKEN not set: the cron reconciler checks the bindings within one cron period (5 minutes).");
  }
  return versionId;
}

if (process.argv[1] === new URL(import.meta.url).pathname) {
  const { values } = parseArgs({ options: { target: { type: "string" }, "dry-run": { type: "boolean" }, message: { type: "string" } } });
  try {
    const target = values.target ? JSON.parse(await readFile(values.target, "utf8")) : {};
    await deploy({ target, dryRun: values["dry-run"], message: values.message, inherit: true });
  } catch (e) {
    console.error(`npm run deploy: ${e.message}`);
    process.exit(1);
  }
}
