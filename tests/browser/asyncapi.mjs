// Validates an AsyncAPI file with the official parser (@asyncapi/parser) and prints, as JSON,
// its diagnostics and the document itself (YAML read with js-yaml) for the Python schema checks.
// Usage: node asyncapi.mjs /abs/asyncapi.yaml   (exit 1 when the parser reports an error)
import { readFileSync } from "node:fs";
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";
import { load as loadYaml } from "js-yaml";

const file = process.argv[2];
const text = readFileSync(file, "utf8");
const parser = new Parser();
const { document, diagnostics } = await parser.parse(text, { source: file });
const show = (d) => ({ code: d.code, message: d.message, path: d.path.join("/") });
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error).map(show);
const warnings = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Warning).map(show);
const out = {
  valid: document !== undefined && errors.length === 0,
  version: document?.version() ?? null,
  channels: document ? document.channels().all().map((c) => c.address()) : [],
  messages: document ? document.messages().all().map((m) => m.name()) : [],
  errors,
  warnings,
  document: loadYaml(text),
};
process.stdout.write(JSON.stringify(out));
process.exitCode = out.valid ? 0 : 1;
