// Splits a SQL text into statements the way D1's query endpoint does: on `;` outside string
// literals, quoted identifiers, comments and `CREATE TRIGGER ... BEGIN ... END` bodies.
// Statements that are only whitespace or comments are dropped.

/** @param {string} sql @returns {string[]} */
export function splitStatements(sql) {
  const statements = [];
  let start = 0;
  let i = 0;
  let depth = 0; // BEGIN ... END nesting (trigger bodies, CASE ... END inside them)
  let sawCode = false;
  const push = (end) => {
    const text = sql.slice(start, end).trim();
    if (sawCode && text) statements.push(text);
    sawCode = false;
  };
  const word = (at) => {
    const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(sql.slice(at, at + 32));
    return m ? m[0] : "";
  };
  while (i < sql.length) {
    const c = sql[i];
    if (c === "-" && sql[i + 1] === "-") {
      const nl = sql.indexOf("\n", i);
      i = nl === -1 ? sql.length : nl + 1;
      continue;
    }
    if (c === "/" && sql[i + 1] === "*") {
      const endc = sql.indexOf("*/", i + 2);
      i = endc === -1 ? sql.length : endc + 2;
      continue;
    }
    if (c === "'" || c === '"' || c === "`" || c === "[") {
      const close = c === "[" ? "]" : c;
      sawCode = true;
      i++;
      while (i < sql.length) {
        if (sql[i] === close) {
          if (close !== "]" && sql[i + 1] === close) {
            i += 2;
            continue;
          } // doubled quote
          break;
        }
        i++;
      }
      i++;
      continue;
    }
    if (/[A-Za-z_]/.test(c) && (i === 0 || !/[A-Za-z0-9_$]/.test(sql[i - 1]))) {
      const w = word(i);
      const upper = w.toUpperCase();
      sawCode = true;
      if (upper === "BEGIN" && isTriggerBody(sql.slice(start, i))) depth++;
      else if (upper === "CASE" && depth > 0) depth++;
      else if (upper === "END" && depth > 0) depth--;
      i += w.length;
      continue;
    }
    if (c === ";" && depth === 0) {
      push(i);
      start = i + 1;
      i++;
      continue;
    }
    if (!/\s/.test(c)) sawCode = true;
    i++;
  }
  push(sql.length);
  return statements;
}

// A BEGIN opens a body only inside CREATE TRIGGER; elsewhere (BEGIN TRANSACTION) it is a statement.
function isTriggerBody(statementSoFar) {
  return /^\s*(?:--[^\n]*\n\s*|\/\*[\s\S]*?\*\/\s*)*CREATE\s+(?:TEMP\s+|TEMPORARY\s+)?TRIGGER\b/i.test(statementSoFar);
}
