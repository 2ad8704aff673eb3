// For test files that run a stack of their own (they replace what serves, or need settings the
// shared stack does not have): the stack started before the file's tests and stopped after, and
// the few things such a file does with its tenants.

import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, expect, vi } from "vitest";
import { adminClient, hostRequest } from "../cloud/client.mjs";
import { startStack } from "../cloud/stack.mjs";

export const PASSWORD = "a long enough password";

/**
 * A stack of the calling test file's own, in a fresh state directory named after `name`, started
 * with `options` (see `startStack`). Its fields are set once the file's `beforeAll` has run.
 * @param {string} name
 * @param {Omit<Parameters<typeof startStack>[0], "stateDir">} [options]
 */
export function ownStack(name, options = {}) {
  const own = {
    stateDir: "",
    /** Set below: kills workerd and starts the stack again on the same state. */
    crashAndRestart: async () => {},
    /** @type {Awaited<ReturnType<typeof startStack>>} */
    stack: undefined,
    /** @type {ReturnType<typeof adminClient>} */
    admin: undefined,
    port: 0,
    /** Tenant `slug`'s admin signs in (`admin@{slug}.test`). */
    login: (/** @type {string} */ slug) =>
      hostRequest(own.port, `${slug}.localhost`, "/api/auth/login", {
        method: "POST",
        body: { email: `admin@${slug}.test`, password: PASSWORD },
      }),
    /** Asks for tenant `slug` (admin `admin@{slug}.test`); expects 201 or 202. */
    async createTenant(/** @type {string} */ slug) {
      const res = await own.admin("POST", "/v1/tenants", { slug, name: slug, admin: { email: `admin@${slug}.test`, password: PASSWORD } });
      expect([201, 202], res.text).toContain(res.status);
      return res;
    },
    /** Waits until tenant `slug` signs its admin in. */
    async serving(/** @type {string} */ slug, timeout = 30_000) {
      await vi.waitFor(
        async () => {
          await own.admin("GET", `/v1/tenants/${slug}`); // carries a pending operation forward
          const res = await own.login(slug);
          if (res.status !== 200) throw new Error(`${slug}: ${res.status} ${res.text}`);
        },
        { timeout, interval: 250 },
      );
    },
    /**
     * Asks every tenant of `slugs` for its projects in a loop (`pauseMs` apart), as its signed-in
     * admin, until the returned function is called; it resolves with the failures and the number
     * of requests. A token refused (401) is replaced by signing in again, which counts as a
     * request too. (Reads with a token, not sign-ins: sign-ins are rate limited per email, 60 a
     * minute, and every request here reaches the tenant's database either way.) The default pause
     * keeps each tenant under about 13 requests a second, inside the free plan's rate limit
     * (1,200 a minute).
     * @param {string[]} slugs
     */
    keepAsking(slugs, pauseMs = 75) {
      let running = true;
      const failures = [];
      let requests = 0;
      const loops = slugs.map(async (slug) => {
        /** @type {string | undefined} */
        let token;
        while (running) {
          let res;
          if (token === undefined) {
            res = await own.login(slug);
            if (res.status === 200) token = res.json.token;
          } else {
            res = await hostRequest(own.port, `${slug}.localhost`, "/api/projects", { headers: { authorization: `Bearer ${token}` } });
            if (res.status === 401) token = undefined;
          }
          requests++;
          if (res.status !== 200) failures.push(`${slug}: ${res.status} ${res.text.slice(0, 200)}`);
          if (pauseMs) await sleep(pauseMs);
        }
      });
      return async () => {
        running = false;
        await Promise.all(loops);
        return { failures, requests };
      };
    },
  };
  const start = async () => {
    own.stack = await startStack({ stateDir: own.stateDir, ...options });
    own.admin = adminClient(own.stack.url, own.stack.adminToken);
    own.port = Number(new URL(own.stack.url).port);
  };
  /** Kills workerd mid-flight (SIGKILL), then starts the stack again on the same state. */
  own.crashAndRestart = async () => {
    await own.stack.crash();
    await start();
  };
  beforeAll(async () => {
    own.stateDir = await mkdtemp(path.join(os.tmpdir(), `tenantry-${name}-`));
    await start();
  }, 120_000);
  afterAll(async () => {
    await own.stack?.stop();
    await rm(own.stateDir, { recursive: true, force: true });
  });
  return own;
}
