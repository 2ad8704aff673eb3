// ESLint (flat config): the recommended rules on every JS file of the repo, which all run on Node.
import js from "@eslint/js";
import globals from "globals";

export default [
  {
    ignores: [
      // Built, installed or generated.
      "target/",
      "target-*/",
      "build/",
      "node_modules/",
      ".tenantry/",
      ".wrangler/",
      "bench/bare/build/",
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
  },
];
