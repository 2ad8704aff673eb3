// Starts one local stack (the wasm Worker in workerd, the control plane, the local cloud) for
// the whole test run, in a fresh state directory, and hands its addresses to the tests.
// The wasm must be built first (`npm test` does it).

import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { ROOT, startStack } from "../cloud/stack.mjs";

/** Tenant bindings per binding host in the test stack. */
export const HOST_CAPACITY = 25;

export default async function setup({ provide }) {
  if (!existsSync(path.join(ROOT, "build", "index_bg.wasm"))) {
    throw new Error("build/index_bg.wasm is missing: run `npm test` (it builds the Worker first)");
  }
  const stateDir = await mkdtemp(path.join(os.tmpdir(), "tenantry-test-"));
  const logs = [];
  // Small binding hosts, so the suite's tenants spread over many of them (every test runs
  // across hosts).
  const stack = await startStack({ stateDir, log: (m) => logs.push(m), hostCapacity: HOST_CAPACITY });
  provide("stack", {
    url: stack.url,
    port: Number(new URL(stack.url).port),
    cloudUrl: stack.cloudUrl,
    apiBase: stack.apiBase,
    token: stack.token,
    adminToken: stack.adminToken,
    jwtKey: stack.jwtKey,
    controlDatabaseId: stack.controlDatabase.uuid,
    accountId: stack.accountId,
    stateDir,
    hostCapacity: HOST_CAPACITY,
  });
  return async () => {
    await stack.stop();
    await rm(stateDir, { recursive: true, force: true });
  };
}
