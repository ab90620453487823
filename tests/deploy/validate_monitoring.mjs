// Validate monitoring.coreos.com/v1 objects with the validators that @kubernetes-models/prometheus-operator
// generates from prometheus-operator's Go API types. Usage: node validate_monitoring.mjs PACKAGE_DIR < objects.json
// Prints a JSON list of error strings (empty: all valid).
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const pkg = process.argv[2];
const objects = JSON.parse(readFileSync(0, "utf8"));
const errors = [];
for (const obj of objects) {
  const [group, version] = obj.apiVersion.split("/");
  const url = pathToFileURL(`${pkg}/${group}/${version}/${obj.kind}.js`).href;
  const mod = await import(url);
  try {
    new mod[obj.kind](obj).validate();
  } catch (e) {
    errors.push(`${obj.kind} ${obj.metadata?.name}: ${e.message}`);
  }
}
console.log(JSON.stringify(errors));
