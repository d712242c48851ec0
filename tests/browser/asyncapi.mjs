// Validates AsyncAPI files with the official parser (@asyncapi/parser) and prints, as JSON, each
// one's diagnostics and the document itself (YAML read with js-yaml) for the Python schema checks.
// Usage: node asyncapi.mjs /abs/a.yaml [/abs/b.yaml ...]   (exit 1 when the parser reports an
// error in any of them). One file: one report object; several: an array of them, in order (one
// node start-up and one parser load for all).
import { readFileSync } from "node:fs";
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";
import { load as loadYaml } from "js-yaml";

const show = (d) => ({ code: d.code, message: d.message, path: d.path.join("/") });

async function report(file) {
  const text = readFileSync(file, "utf8");
  const { document, diagnostics } = await new Parser().parse(text, { source: file });
  const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error).map(show);
  const warnings = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Warning).map(show);
  return {
    valid: document !== undefined && errors.length === 0,
    version: document?.version() ?? null,
    channels: document ? document.channels().all().map((c) => c.address()) : [],
    messages: document ? document.messages().all().map((m) => m.name()) : [],
    errors,
    warnings,
    document: loadYaml(text),
  };
}

const files = process.argv.slice(2);
const reports = [];
for (const file of files) {
  reports.push(await report(file));
}
process.stdout.write(JSON.stringify(files.length === 1 ? reports[0] : reports));
process.exitCode = reports.every((r) => r.valid) ? 0 : 1;
