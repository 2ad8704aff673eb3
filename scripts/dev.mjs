// `npm run dev`: the whole stack locally, with a demo tenant, until Ctrl-C.
//
// State (the local cloud's registry and every D1 database) lives in `.tenantry/dev/` and survives
// restarts; delete that folder to start from nothing.

import { spawn } from "node:child_process";
import { cp, mkdir, readdir, stat } from "node:fs/promises";
import path from "node:path";
import { adminClient } from "../cloud/client.mjs";
import { ROOT, startStack } from "../cloud/stack.mjs";

const port = Number(process.env.PORT ?? 8787);
const cloudPort = Number(process.env.CLOUD_PORT ?? 8788);
const demo = process.env.DEMO_TENANT ?? "acme";

let stack;
try {
  stack = await startStack({
    stateDir: path.join(ROOT, ".tenantry", "dev"),
    port,
    cloudPort,
    cron: true,
    log: (m) => m && console.log(`[local cloud] ${m}`),
  });
} catch (e) {
  // A sentence, not a stack trace: what failed and what to do.
  console.error(`\nnpm run dev could not start: ${e.message}`);
  process.exit(1);
}

// The demo tenant, created through the admin API like any other (a no-op when it exists).
const admin = adminClient(stack.url, stack.adminToken);
const created = await admin("POST", "/v1/tenants", {
  slug: demo,
  name: "Acme (demo)",
  plan: "pro",
  admin: { email: "admin@acme.test", password: "change me, please" },
});
let status = created.json?.tenant?.status;
for (let i = 0; status !== "active" && i < 100; i++) {
  await new Promise((r) => setTimeout(r, 200));
  status = (await admin("GET", `/v1/tenants/${demo}`)).json?.tenant?.status;
}

console.log(`
tenantry is running.

  control plane   ${stack.url}/healthz
  admin API       ${stack.url}/v1/tenants   (Authorization: Bearer ${stack.adminToken})
  demo tenant     ${stack.tenantUrl(demo)}/api/auth/login   (${status}; admin@acme.test / "change me, please")
  local cloud     ${stack.apiBase}   (Cloudflare API stand-in)
                  token ${stack.token}, account ${stack.accountId}

  Create a tenant:
    curl -X POST ${stack.url}/v1/tenants -H 'Authorization: Bearer ${stack.adminToken}' \\
      -d '{"slug":"globex","name":"Globex","admin":{"email":"a@globex.test","password":"a long password"}}'

  Deploy to the local cloud as to Cloudflare (wrangler deploy; tenant bindings live on binding hosts):
    npm run deploy:local

  Drive the local cloud with the real wrangler CLI:
    CLOUDFLARE_API_BASE_URL=${stack.apiBase} CLOUDFLARE_API_TOKEN=${stack.token} \\
    CLOUDFLARE_ACCOUNT_ID=${stack.accountId} npx wrangler versions list --name tenantry

Ctrl-C to stop. State is kept in .tenantry/dev/. A change under src/, migrations/ or the Cargo
files rebuilds the Worker and reloads it (tenants and data stay).
`);

// Edit-reload: a change to what the Worker is built from rebuilds it, then deploys it with
// `wrangler deploy` (a new version; workerd restarts on it, drained; D1 data persists). A failed build prints the
// compiler's output; the deployed version keeps serving, and the last good build is put back in
// build/ so that what a later deploy (a restart, `npm run deploy:local`) uploads is one that built.
const BUILD = path.join(ROOT, "build");
const LAST_GOOD = path.join(ROOT, ".tenantry", "last-good-build");
let building = null;
let again = false;
/** @type {NodeJS.Timeout | undefined} */
let debounce;

/** The running build (its own process group, so a stop can end cargo and worker-build with it). */
/** @type {import("node:child_process").ChildProcess | null} */
let buildProcess = null;

function build() {
  return new Promise((resolve) => {
    const child = spawn("bash", [path.join(ROOT, "scripts", "build-worker.sh")], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    buildProcess = child;
    let output = "";
    child.stdout.on("data", (d) => (output += d));
    child.stderr.on("data", (d) => (output += d));
    child.on("close", (code) => {
      buildProcess = null;
      resolve({ ok: code === 0, output });
    });
  });
}

async function rebuild() {
  if (building) {
    again = true;
    return;
  }
  building = (async () => {
    do {
      again = false;
      const started = Date.now();
      console.log("[dev] sources changed: rebuilding the Worker");
      await mkdir(LAST_GOOD, { recursive: true });
      await cp(BUILD, LAST_GOOD, { recursive: true });
      const { ok, output } = await build();
      if (!ok) {
        await cp(LAST_GOOD, BUILD, { recursive: true });
        console.error(`${output.trim()}\n[dev] the build failed (above); the previous Worker keeps serving`);
        continue;
      }
      // The same path as production: `wrangler deploy` of the new build to the local cloud.
      try {
        await stack.deployBuild({ message: "npm run dev: sources changed", migrate: true });
      } catch (e) {
        console.error(`[dev] deploying the new build failed; the previous Worker keeps serving:\n${e.message}`);
        continue;
      }
      console.log(`[dev] deployed and reloaded the new Worker (${((Date.now() - started) / 1000).toFixed(1)} s)`);
    } while (again);
  })().finally(() => (building = null));
}

// Polled, not fs.watch: editors that save by renaming a new file into place (vim, sed -i) replace
// the inode a watcher was following. One stat of each source file a second is cheap.
const SOURCES = ["src", "migrations", "build.rs", "Cargo.toml", "Cargo.lock"].map((p) => path.join(ROOT, p));

/** A fingerprint of the sources: every file's path, size and modification time. */
async function sourcesStamp() {
  const parts = [];
  const visit = async (p) => {
    const info = await stat(p).catch(() => null);
    if (!info) return;
    if (info.isDirectory()) {
      for (const name of (await readdir(p)).sort()) await visit(path.join(p, name));
    } else {
      parts.push(`${p}:${info.size}:${info.mtimeMs}`);
    }
  };
  for (const p of SOURCES) await visit(p);
  return parts.join("\n");
}

let stamp = await sourcesStamp();
setInterval(async () => {
  const now = await sourcesStamp();
  if (now === stamp) return;
  stamp = now;
  clearTimeout(debounce);
  debounce = setTimeout(rebuild, 300);
}, 1000).unref();

let stopping = false;
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, async () => {
    if (stopping) return;
    stopping = true;
    // A build in progress: end its whole process group (bash, worker-build, cargo, rustc).
    if (buildProcess?.pid) {
      try {
        process.kill(-buildProcess.pid, "SIGTERM");
      } catch {
        // already gone
      }
    }
    await stack.stop();
    process.exit(0);
  });
}
