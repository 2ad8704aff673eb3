import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["tests/**/*.test.mjs"],
    // One local stack (workerd + local cloud) for the whole run, started in globalSetup.
    globalSetup: ["tests/global-setup.mjs"],
    // The stack is shared and restarts of workerd are global: run files one after another.
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ["default"],
  },
});
