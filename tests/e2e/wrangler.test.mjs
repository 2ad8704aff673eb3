// The real wrangler CLI, pointed at the local cloud with CLOUDFLARE_API_BASE_URL, manages D1
// databases there. (`wrangler d1 migrations apply --remote` runs at every stack start.)

import { mkdtemp, readFile, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, expect, test } from "vitest";
import { wrangler as run } from "../../cloud/stack.mjs";
import { api, freshSlug, stack } from "../helpers.mjs";

let cwd;
beforeAll(async () => {
  cwd = await mkdtemp(path.join(os.tmpdir(), "tenantry-wrangler-"));
});
afterAll(() => rm(cwd, { recursive: true, force: true }));

const wrangler = async (...args) => {
  const out = await run(args, stack.cloudUrl, { cwd });
  expect(out.code, `wrangler ${args.join(" ")}\n${out.stdout}\n${out.stderr}`).toBe(0);
  return out.stdout;
};

test("wrangler d1 create, list, execute --remote, export --remote, delete", async () => {
  const name = `wr-${freshSlug("w")}`;

  const created = await wrangler("d1", "create", name);
  const db = (await api("GET", `/d1/database/${name}`)).result;
  expect(created).toContain(name);
  expect(created).toContain(db.uuid);

  const listed = await wrangler("d1", "list", "--json");
  expect(JSON.parse(listed).map((d) => d.name)).toContain(name);

  const executed = await wrangler(
    "d1", "execute", name, "--remote", "--json",
    "--command", "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes (body) VALUES ('from wrangler'); SELECT body FROM notes;",
  );
  const results = JSON.parse(executed);
  expect(results.at(-1).results).toEqual([{ body: "from wrangler" }]);

  const file = path.join(cwd, "dump.sql");
  await wrangler("d1", "export", name, "--remote", "--output", file);
  const dump = await readFile(file, "utf8");
  expect(dump).toContain("CREATE TABLE notes");
  expect(dump).toContain("from wrangler");

  const deleted = await wrangler("d1", "delete", name, "-y");
  expect(deleted).toMatch(/[Dd]eleted/);
  const gone = await api("GET", `/d1/database/${db.uuid}`, undefined, { raw: true });
  expect(gone.status).toBe(404);
});

test("wrangler reports the local cloud's errors (duplicate name, 7502)", async () => {
  const name = `wr-${freshSlug("dup")}`;
  await wrangler("d1", "create", name);
  const again = await run(["d1", "create", name], stack.cloudUrl, { cwd });
  expect(again.code).not.toBe(0);
  expect(`${again.stdout}${again.stderr}`).toMatch(/7502|already exists/);
});
