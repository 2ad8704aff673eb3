// A sampling CPU profile of one Worker's isolate in workerd, over the V8 inspector (the Chrome
// DevTools protocol), summarised as self time per function and per kind of code. The benchmark
// uses it to show where a request's time goes (BENCH_PROFILE=1).

import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";

/** Talks to one inspector target; resolves `send`s by id. */
async function connect(url) {
  const ws = new WebSocket(url);
  await new Promise((resolve, reject) => {
    ws.addEventListener("open", resolve, { once: true });
    ws.addEventListener("error", () => reject(new Error(`cannot open the inspector at ${url}`)), { once: true });
  });
  let id = 0;
  const waiting = new Map();
  ws.addEventListener("message", (event) => {
    const msg = JSON.parse(event.data);
    const entry = waiting.get(msg.id);
    if (!entry) return;
    waiting.delete(msg.id);
    if (msg.error) entry.reject(new Error(`${entry.method}: ${msg.error.message}`));
    else entry.resolve(msg.result);
  });
  return {
    send(method, params = {}) {
      const message = { id: ++id, method, params };
      return new Promise((resolve, reject) => {
        waiting.set(message.id, { resolve, reject, method });
        ws.send(JSON.stringify(message));
      });
    },
    close: () => ws.close(),
  };
}

/**
 * Profiles Worker `worker` while `during()` runs.
 * @returns the profile summary: total sampled ms, ms per kind, and the top functions by self time
 */
export async function profileWorker(inspectorPort, worker, during, { top = 25, intervalUs = 100 } = {}) {
  const session = await connect(`ws://127.0.0.1:${inspectorPort}/core:user:${worker}`);
  try {
    await session.send("Profiler.enable");
    await session.send("Profiler.setSamplingInterval", { interval: intervalUs });
    await session.send("Profiler.start");
    const result = await during();
    const { profile } = await session.send("Profiler.stop");
    // BENCH_PROFILE_DIR: also keep the whole profile (`.cpuprofile`: Chrome DevTools opens it).
    if (process.env.BENCH_PROFILE_DIR) {
      await mkdir(process.env.BENCH_PROFILE_DIR, { recursive: true });
      await writeFile(path.join(process.env.BENCH_PROFILE_DIR, `${worker.replace(/[^\w.-]+/g, "_")}.cpuprofile`), JSON.stringify(profile));
    }
    return { result, summary: summarise(profile, top) };
  } finally {
    session.close();
  }
}

/** Self time per function (and per kind: wasm, JS, runtime) from a V8 CPU profile. */
export function summarise(profile, top) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfMs = new Map();
  // Each sample's time is the delta to the next one.
  for (let i = 0; i < profile.samples.length; i++) {
    const delta = (profile.timeDeltas[i + 1] ?? 0) / 1000;
    selfMs.set(profile.samples[i], (selfMs.get(profile.samples[i]) ?? 0) + delta);
  }
  const functions = new Map();
  const kinds = {};
  let total = 0;
  for (const [id, ms] of selfMs) {
    const { functionName, url, lineNumber } = byId.get(id).callFrame;
    const kind = kindOf(functionName, url);
    // An anonymous function is told apart by where it is (its module and line, 1-based).
    const name = functionName || (url ? `(anonymous ${url.split("/").at(-1)}:${lineNumber + 1})` : "(anonymous)");
    const key = `${name} [${kind}]`;
    functions.set(key, (functions.get(key) ?? 0) + ms);
    kinds[kind] = (kinds[kind] ?? 0) + ms;
    total += ms;
  }
  const busy = total - (kinds.idle ?? 0);
  return {
    sampledMs: total,
    busyMs: busy,
    kinds: Object.fromEntries(Object.entries(kinds).sort((a, b) => b[1] - a[1])),
    top: [...functions]
      .filter(([key]) => !key.endsWith("[idle]"))
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, ms]) => ({ name, ms, share: ms / busy })),
  };
}

function kindOf(name, url) {
  if (name === "(idle)") return "idle";
  if (name === "(garbage collector)") return "gc";
  if (name === "(program)" || name === "(root)") return "runtime";
  if (url.startsWith("wasm://")) return "wasm";
  if (url === "") return "native";
  return "js";
}
