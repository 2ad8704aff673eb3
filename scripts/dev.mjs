// `npm run dev`: the whole stack locally, with a demo tenant, until Ctrl-C.
//
// State (the local cloud's registry and every D1 database) lives in `.tenantry/dev/` and survives
// restarts; delete that folder to start from nothing.

import path from "node:path";
import { provisionTenant } from "../cloud/provision.mjs";
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
const tenant = await provisionTenant(stack.api, demo);
await stack.runtime.restart("demo tenant binding");

console.log(`
tenantry is running.

  control plane   ${stack.url}/healthz
  demo tenant     ${stack.tenantUrl(demo)}/api/tenant   (database ${tenant.name}, binding ${tenant.binding})
                  ${stack.tenantUrl(demo)}/api/projects
  local cloud     ${stack.apiBase}   (Cloudflare API stand-in)
                  token ${stack.token}, account ${stack.accountId}

  Drive it with the real wrangler CLI:
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
