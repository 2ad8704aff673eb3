// `npx wrangler dev` (what every Workers developer types first) runs the Worker on its own, with
// wrangler.toml's APEX and no local cloud: it cannot serve tenants (README, "wrangler dev"). It
// must say where to go instead: its build prints it, and the Worker answers localhost with 421 and
// the way to the local stack, never a bare 404.

import { spawn } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { expect, test, vi } from "vitest";
import { hostRequest } from "../../cloud/client.mjs";
import { ROOT } from "../../cloud/stack.mjs";

function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = /** @type {net.AddressInfo} */ (server.address());
      server.close(() => resolve(port));
    });
  });
}

test("wrangler dev prints where to go, and answers localhost with 421 pointing at npm run dev", async () => {
  const port = await freePort();
  const child = spawn(
    path.join(ROOT, "node_modules", ".bin", "node"),
    [path.join(ROOT, "node_modules", "wrangler", "bin", "wrangler.js"), "dev", "--port", String(port), "--ip", "127.0.0.1"],
    // TENANTRY_SKIP_BUILD: build/ is current (npm test built it); the notice is printed regardless.
    {
      cwd: ROOT,
      env: { ...process.env, TENANTRY_SKIP_BUILD: "1", WRANGLER_SEND_METRICS: "false", CI: "true" },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let output = "";
  child.stdout.on("data", (d) => (output += d));
  child.stderr.on("data", (d) => (output += d));
  try {
    const res = await vi.waitFor(() => hostRequest(port, "localhost", "/"), { timeout: 90_000, interval: 500 });
    expect(res.status).toBe(421);
    expect(res.json.error.code).toBe("not_configured_for_localhost");
    expect(res.json.error.message).toMatch(/npm run dev/);
    const tenant = await hostRequest(port, "acme.localhost", "/api/auth/login");
    expect(tenant.status).toBe(421);
    expect(output).toMatch(/\[tenantry\] `wrangler dev` starts this Worker on its own/);
    expect(output).toMatch(/npm run dev/);
  } finally {
    child.kill("SIGINT");
    await new Promise((resolve) => child.once("close", resolve));
  }
}, 120_000);
