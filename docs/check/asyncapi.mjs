// Validates docs/asyncapi.yaml with the AsyncAPI initiative's own parser (@asyncapi/parser,
// installed by scripts/test.sh into .tools/asyncapi) and prints the document's message
// examples as JSON, for tests/pipeline/asyncapi.rs to publish through the broker.
//
// Usage: node docs/check/asyncapi.mjs docs/asyncapi.yaml
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(process.env.ASYNCAPI_PARSER_DIR + "/");
const { Parser, DiagnosticSeverity } = require("@asyncapi/parser");
// The parser checks the document, not its examples: each example is checked against its
// message's schemas too (ajv, which the parser itself brings).
const Ajv = require("ajv/dist/2020").default;
const addFormats = require("ajv-formats");

const path = process.argv[2];
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(path, "utf8"));
const problems = diagnostics.filter(
  (d) => d.severity === DiagnosticSeverity.Error || d.severity === DiagnosticSeverity.Warning,
);
for (const d of problems) {
  console.error(`${path}: ${d.path.join("/")}: ${d.message} (${d.code})`);
}
if (!document || problems.length > 0) {
  console.error(`${path}: ${problems.length} problem(s)`);
  process.exit(1);
}
const ajv = new Ajv({ strict: false, allErrors: true });
addFormats(ajv);
const examples = {};
let bad = 0;
for (const message of document.components().messages()) {
  const schemas = { headers: message.headers()?.json(), payload: message.payload()?.json() };
  examples[message.id()] = message.examples().all().map((e) => {
    const example = { name: e.name(), headers: e.headers() ?? {}, payload: e.payload() };
    for (const part of ["headers", "payload"]) {
      if (!schemas[part] || (part === "headers" && !e.headers())) continue;
      const validate = ajv.compile(schemas[part]);
      if (!validate(example[part])) {
        bad += 1;
        console.error(`${path}: message ${message.id()}, example ${e.name()}: its ${part} ` +
          `do not match the schema: ${ajv.errorsText(validate.errors)}`);
      }
    }
    return example;
  });
}
if (bad > 0) process.exit(1);
console.log(JSON.stringify(examples));
