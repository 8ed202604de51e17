// Validates the prometheus-operator resources (ServiceMonitor,
// PrometheusRule) of a kustomize build against the operator's CRD schemas,
// twice: at run time with the validators @kubernetes-models generates from
// the CRDs (types, required fields, patterns), and strictly with TypeScript's
// excess-property check on the same generated types, which the run-time
// validators do not do (an unknown field, a typo such as `intervall`, fails).
//
//   node crd-check.mjs BUILD.yaml...   (YAML read by kustomize's own output: one
//                                        JSON document per line, see check.sh)
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { tmpdir } from "node:os";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";

const here = dirname(fileURLToPath(import.meta.url));
const kinds = {
  ServiceMonitor: { model: ServiceMonitor, type: "IServiceMonitor" },
  PrometheusRule: { model: PrometheusRule, type: "IPrometheusRule" },
};
const docs = [];
for (const file of process.argv.slice(2)) {
  for (const line of readFileSync(file, "utf8").split("\n")) {
    if (!line.trim()) continue;
    const d = JSON.parse(line);
    if (kinds[d.kind]) docs.push({ file, d });
  }
}
if (docs.length === 0) {
  console.error("crd-check: no ServiceMonitor or PrometheusRule found");
  process.exit(1);
}
let failed = 0;
for (const { file, d } of docs) {
  try {
    new kinds[d.kind].model(d).validate();
  } catch (e) {
    console.error(`crd-check: ${file}: ${d.kind}/${d.metadata.name}: ${e.message}`);
    failed++;
  }
}
const dir = mkdtempSync(join(here, ".crd-check-"));
try {
  const lines = [
    'import type { IServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";',
    'import type { IPrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";',
  ];
  docs.forEach(({ d }, i) => lines.push(`export const doc${i}: ${kinds[d.kind].type} = ${JSON.stringify(d)};`));
  writeFileSync(join(dir, "docs.ts"), lines.join("\n") + "\n");
  try {
    execFileSync(
      join(here, "node_modules/.bin/tsc"),
      ["--noEmit", "--strict", "--skipLibCheck", "--module", "nodenext", "--moduleResolution", "nodenext",
       "--target", "es2022", join(dir, "docs.ts")],
      { stdio: "inherit" },
    );
  } catch {
    console.error("crd-check: a resource has a field its CRD does not define (see above)");
    failed++;
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
if (failed) process.exit(1);
console.log(`crd-check: ${docs.length} resources match their CRD schemas`);
