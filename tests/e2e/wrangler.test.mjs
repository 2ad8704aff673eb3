// The real wrangler CLI, pointed at the local cloud with CLOUDFLARE_API_BASE_URL, manages D1
// databases there. (`wrangler d1 migrations apply --remote` runs at every stack start.)

import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
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
    "d1",
    "execute",
    name,
    "--remote",
    "--json",
    "--command",
    "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT); INSERT INTO notes (body) VALUES ('from wrangler'); SELECT body FROM notes;",
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

test("wrangler d1 execute --remote --file imports through init, upload, ingest and poll; list and get report the tables", async () => {
  const name = `wr-${freshSlug("imp")}`;
  await wrangler("d1", "create", name);
  const file = path.join(cwd, "import.sql");
  const rows = Array.from({ length: 200 }, (_, i) => `INSERT INTO items (name) VALUES ('item ${i}');`).join("\n");
  await writeFile(file, `CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\nCREATE TABLE tags (name TEXT);\n${rows}\n`);
  const out = await wrangler("d1", "execute", name, "--remote", "--file", file, "--yes");
  expect(out).toMatch(/Executed 202 queries/);

  const counted = JSON.parse(await wrangler("d1", "execute", name, "--remote", "--json", "--command", "SELECT count(*) AS n FROM items"));
  expect(counted.at(-1).results).toEqual([{ n: 200 }]);
  const listed = JSON.parse(await wrangler("d1", "list", "--json")).find((d) => d.name === name);
  expect(listed.num_tables).toBe(2);
  expect(listed.file_size).toBeGreaterThan(0);
  const got = (await api("GET", `/d1/database/${name}`)).result;
  expect(got.num_tables).toBe(2);

  // A file that fails half-way changes nothing: the import is one transaction.
  const bad = path.join(cwd, "bad.sql");
  await writeFile(bad, "INSERT INTO items (name) VALUES ('kept out');\nINSERT INTO nowhere VALUES (1);\n");
  const failed = await run(["d1", "execute", name, "--remote", "--file", bad, "--yes"], stack.cloudUrl, { cwd });
  expect(failed.code).not.toBe(0);
  const after = JSON.parse(await wrangler("d1", "execute", name, "--remote", "--json", "--command", "SELECT count(*) AS n FROM items"));
  expect(after.at(-1).results).toEqual([{ n: 200 }]);
  await wrangler("d1", "delete", name, "-y");
});
