// The local cloud's statement splitter (what D1's query endpoint does with `;`-separated SQL).

import { expect, test } from "vitest";
import { splitStatements } from "../cloud/sql.mjs";

test.each([
  ["select 1; select 2;", ["select 1", "select 2"]],
  ["select 'a;b'; select \"x;y\"; -- c;\n", ["select 'a;b'", 'select "x;y"']],
  ["-- only a comment\n", []],
  ["  ;  ; ", []],
  [
    "CREATE TRIGGER t AFTER INSERT ON x BEGIN UPDATE y SET a = CASE WHEN 1 THEN 2 END; DELETE FROM z; END; select 1",
    ["CREATE TRIGGER t AFTER INSERT ON x BEGIN UPDATE y SET a = CASE WHEN 1 THEN 2 END; DELETE FROM z; END", "select 1"],
  ],
  ["/* a; */ select 1 /* ; */; select [a;b] from t", ["/* a; */ select 1 /* ; */", "select [a;b] from t"]],
  ["select 'it''s;'", ["select 'it''s;'"]],
  ["BEGIN TRANSACTION; select 1; COMMIT;", ["BEGIN TRANSACTION", "select 1", "COMMIT"]],
  ["select `a;b` from t", ["select `a;b` from t"]],
])("%j", (sql, want) => {
  expect(splitStatements(sql)).toEqual(want);
});
