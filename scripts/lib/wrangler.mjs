// Runs the real wrangler CLI (the one in node_modules) as a child process, never blocking the
// event loop: the local cloud that wrangler may be talking to can live in this same process.

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

/**
 * @param {string[]} args
 * @param {object} [opts]
 * @param {Record<string, string | undefined>} [opts.env] added to this process's environment
 * @param {string} [opts.cwd]
 * @param {boolean} [opts.inherit] print wrangler's output as it comes (still captured)
 * @param {string} [opts.input] written to wrangler's stdin (e.g. a secret for `wrangler secret put`)
 * @returns {Promise<{ code: number | null, stdout: string, stderr: string }>}
 */
export function runWrangler(args, { env = {}, cwd = ROOT, inherit = false, input } = {}) {
  const bin = path.join(ROOT, "node_modules", "wrangler", "bin", "wrangler.js");
  // wrangler needs Node >= 22: the one `npm install` put in node_modules, whatever runs us.
  const node = path.join(ROOT, "node_modules", ".bin", "node");
  return new Promise((resolve, reject) => {
    const child = spawn(existsSync(node) ? node : process.execPath, [bin, ...args], {
      cwd,
      // Non-interactive (prompts take their defaults) and plain text: our callers read the output.
      env: { ...process.env, WRANGLER_SEND_METRICS: "false", CI: "true", NO_COLOR: "1", FORCE_COLOR: "0", ...env },
      stdio: [input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
    });
    if (input !== undefined) child.stdin.end(input);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d) => {
      stdout += d;
      if (inherit) process.stdout.write(d);
    });
    child.stderr.on("data", (d) => {
      stderr += d;
      if (inherit) process.stderr.write(d);
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}
