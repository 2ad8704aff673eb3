// `npm run dev`: the whole stack locally, with a demo tenant, until Ctrl-C.
//
// State (the local cloud's registry and every D1 database) lives in `.tenantry/dev/` and survives
// restarts; delete that folder to start from nothing.

import path from "node:path";
import { adminClient } from "../cloud/client.mjs";
import { ROOT, startStack } from "../cloud/stack.mjs";

const port = Number(process.env.PORT ?? 8787);
const cloudPort = Number(process.env.CLOUD_PORT ?? 8788);
const demo = process.env.DEMO_TENANT ?? "acme";

const stack = await startStack({
  stateDir: path.join(ROOT, ".tenantry", "dev"),
  port,
  cloudPort,
  log: (m) => m && console.log(`[local cloud] ${m}`),
});

// The demo tenant, created through the admin API like any other (a no-op when it exists).
const admin = adminClient(stack.url, stack.adminToken);
const created = await admin("POST", "/v1/tenants", {
  slug: demo, name: "Acme (demo)", plan: "pro", admin: { email: "admin@acme.test", password: "change me, please" },
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

  Drive the local cloud with the real wrangler CLI:
    CLOUDFLARE_API_BASE_URL=${stack.apiBase} CLOUDFLARE_API_TOKEN=${stack.token} \\
    CLOUDFLARE_ACCOUNT_ID=${stack.accountId} npx wrangler d1 list

Ctrl-C to stop. State is kept in .tenantry/dev/.
`);

let stopping = false;
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, async () => {
    if (stopping) return;
    stopping = true;
    await stack.stop();
    process.exit(0);
  });
}
