// The local cloud's registry (databases, scripts, dispatch namespaces and their scripts), kept in
// one JSON file so a restarted `npm run dev` finds its databases again. Writes are atomic (temp
// file + rename) and serialised.

import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import path from "node:path";

export class State {
  constructor(file) {
    this.file = file;
    this.data = { databases: {}, scripts: {}, namespaces: {} };
    this.#writing = Promise.resolve();
  }

  #writing;

  async load() {
    try {
      this.data = JSON.parse(await readFile(this.file, "utf8"));
    } catch (e) {
      if (e.code !== "ENOENT") throw e;
    }
    this.data.databases ??= {};
    this.data.scripts ??= {};
    this.data.namespaces ??= {};
    return this;
  }

  /** Persists the current data; resolves once it is on disk. */
  save() {
    const snapshot = JSON.stringify(this.data, null, 1);
    this.#writing = this.#writing.then(async () => {
      await mkdir(path.dirname(this.file), { recursive: true });
      const tmp = `${this.file}.${process.pid}.tmp`;
      await writeFile(tmp, snapshot);
      await rename(tmp, this.file);
    });
    return this.#writing;
  }

  databases() {
    return Object.values(this.data.databases);
  }

  /** A database by uuid or by name (wrangler puts names in the id slot). */
  database(idOrName) {
    return this.data.databases[idOrName] ?? this.databases().find((d) => d.name === idOrName);
  }
}
