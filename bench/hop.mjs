// What one cross-isolate hop costs on this machine's workerd, apart from tenantry: a Worker that
// answers a small JSON itself, against the same Worker asking a second Worker for it over a
// service binding, by `fetch` and by JS RPC. tenantry's hot read through a binding host pays one
// such hop that the bare Worker does not (BENCHMARKS.md, "Where the time goes"). Prints req/s and
// workerd CPU per request for each, the median of alternating rounds with the spread.
//
// `node bench/hop.mjs` (part of `npm run bench`). Knobs: HOP_ROUNDS (5), HOP_SECONDS (4).

import { readFile } from "node:fs/promises";
import autocannon from "autocannon";
import { Miniflare, convertV4MiniflareOptions } from "miniflare";

const ROUNDS = Number(process.env.HOP_ROUNDS ?? 5);
const SECONDS = Number(process.env.HOP_SECONDS ?? 4);
const BODY = { projects: Array.from({ length: 10 }, (_, i) => ({ id: i + 1, name: `Project ${i + 1}`, description: "x".repeat(40) })) };

const INNER = `
import { WorkerEntrypoint } from "cloudflare:workers";
const BODY = ${JSON.stringify(BODY)};
export default class extends WorkerEntrypoint {
  rows() { return BODY; }
  fetch() { return Response.json(BODY); }
}`;
const OUTER = `
const BODY = ${JSON.stringify(BODY)};
export default {
  async fetch(request, env) {
    const path = new URL(request.url).pathname;
    if (path === "/direct") return Response.json(BODY);
    if (path === "/fetch") return Response.json(await (await env.INNER.fetch("https://inner/")).json());
    return Response.json(await env.INNER.rows());
  },
};`;

/** workerd's CPU time so far, ms (utime + stime of the workerd processes). */
async function workerdCpuMs() {
  const { readdir } = await import("node:fs/promises");
  let total = 0;
  for (const pid of await readdir("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      if (!(await readFile(`/proc/${pid}/cmdline`, "utf8")).includes("workerd")) continue;
      const fields = (await readFile(`/proc/${pid}/stat`, "utf8")).split(") ")[1].split(" ");
      total += ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
    } catch {
      // gone meanwhile
    }
  }
  return total;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const mf = new Miniflare(
  convertV4MiniflareOptions({
    workers: [
      {
        name: "outer",
        modules: true,
        script: OUTER,
        compatibilityDate: "2026-11-01",
        serviceBindings: { INNER: "inner" },
        unsafeDirectSockets: [{ host: "127.0.0.1", port: 0 }],
      },
      { name: "inner", modules: true, script: INNER, compatibilityDate: "2026-11-01" },
    ],
  }),
);
await mf.ready;
const base = String(await mf.unsafeGetDirectURL("outer")).replace(/\/$/, "");
const paths = ["/direct", "/fetch", "/rpc"];
const runs = Object.fromEntries(paths.map((p) => [p, []]));
for (const p of paths) await autocannon({ url: base + p, connections: 16, duration: 2 }); // warm-up
for (let round = 0; round < ROUNDS; round++) {
  for (const p of round % 2 ? [...paths].reverse() : paths) {
    const before = await workerdCpuMs();
    const r = await autocannon({ url: base + p, connections: 16, duration: SECONDS });
    const cpu = ((await workerdCpuMs()) - before) * 1000;
    runs[p].push({ rps: r.requests.average, cpuUs: cpu / r.requests.total });
  }
}
await mf.dispose();
const direct = median(runs["/direct"].map((r) => r.cpuUs));
console.log(`one hop on this workerd (${ROUNDS} alternating rounds of ${SECONDS} s, 16 connections; median, min–max):`);
for (const p of paths) {
  const cpu = runs[p].map((r) => r.cpuUs);
  const rps = runs[p].map((r) => r.rps);
  const extra = p === "/direct" ? "" : `, the hop ${Math.round(median(cpu) - direct)} µs`;
  console.log(
    `  ${p.slice(1).padEnd(7)} ${Math.round(median(rps))} req/s (${Math.round(Math.min(...rps))}–${Math.round(Math.max(...rps))}), workerd CPU ${Math.round(median(cpu))} µs/request (${Math.round(Math.min(...cpu))}–${Math.round(Math.max(...cpu))})${extra}`,
  );
}
