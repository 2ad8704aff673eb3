// @ts-check
// ESLint (flat config): the recommended rules on every JS file of the repo, which all run on Node.
import js from "@eslint/js";
import globals from "globals";

/**
 * Every file in scope opens with `// @ts-check`: tsconfig.json type-checks only such files until
 * cloud/ is rewritten (see the TODO there), so a file without it would go unchecked unnoticed.
 * @type {import("eslint").Rule.RuleModule}
 */
const requireTsCheck = {
  meta: {
    type: "problem",
    docs: { description: "require `// @ts-check` on a file's first line" },
    messages: { missing: "Put `// @ts-check` on the first line: tsc checks only files that have it (see tsconfig.json)." },
    schema: [],
  },
  create(context) {
    return {
      Program(node) {
        const first = context.sourceCode.getAllComments()[0];
        const ok = first?.type === "Line" && first.value.trim() === "@ts-check" && first.loc.start.line === 1;
        if (!ok) context.report({ node, loc: { line: 1, column: 0 }, messageId: "missing" });
      },
    };
  },
};

export default [
  {
    ignores: [
      // Built, installed or generated.
      "target/",
      "build/",
      "node_modules/",
      ".tenantry/",
      ".wrangler/",
      "bench/bare/build/",
      // TODO(issue 11): include once cloud/ is rewritten
      "cloud/",
      "scripts/deploy.mjs",
      "scripts/dev.mjs",
      "tests/e2e/deploy.test.mjs",
    ],
  },
  js.configs.recommended,
  {
    files: ["**/*.{js,mjs}"],
    languageOptions: {
      sourceType: "module",
      globals: globals.node,
    },
    linterOptions: {
      reportUnusedDisableDirectives: "error",
    },
    plugins: { local: { rules: { "require-ts-check": requireTsCheck } } },
    rules: {
      // TODO(issue 11): drop with the `// @ts-check` lines once tsconfig.json sets checkJs.
      "local/require-ts-check": "error",
    },
  },
];
