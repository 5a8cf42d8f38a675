// Checks that what is committed is what the sources build to: (a) dist/ equals a fresh `tsc`
// build of src/, file for file, and (b) the pages embedded in weft serve
// (crates/weft-server/assets) are current (scripts/pages.mjs --check). Exits 1 on a difference.
//
// usage: node scripts/check-built.mjs      (npm run check)
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const HERE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const DIST = path.join(HERE, "dist");
const FIX = "run npm run build in clients/typescript";

function files(dir, base = dir) {
  let out = [];
  let names = [];
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const n of names) {
    const p = path.join(dir, n);
    if (statSync(p).isDirectory()) out = out.concat(files(p, base));
    else out.push(path.relative(base, p));
  }
  return out.sort();
}

let failed = false;
const tmp = mkdtempSync(path.join(tmpdir(), "weft-client-dist-"));
try {
  try {
    execFileSync("npx", ["tsc", "-p", "tsconfig.json", "--outDir", tmp], { cwd: HERE, stdio: "inherit" });
  } catch {
    console.error("check: tsc failed");
    process.exit(1);
  }
  const fresh = files(tmp);
  const have = files(DIST);
  const diff = [];
  for (const f of fresh) {
    if (!have.includes(f)) diff.push(`dist/${f} is missing`);
    else if (!readFileSync(path.join(tmp, f)).equals(readFileSync(path.join(DIST, f)))) diff.push(`dist/${f} differs from a fresh build`);
  }
  for (const f of have) if (!fresh.includes(f)) diff.push(`dist/${f} is not built from src (left over?)`);
  if (diff.length) {
    failed = true;
    console.error("check: dist/ is not current:\n  " + diff.join("\n  ") + "\n" + FIX);
  } else {
    console.log(`check: dist/ equals a fresh tsc build (${fresh.length} files)`);
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}

try {
  execFileSync(process.execPath, [path.join(HERE, "scripts/pages.mjs"), "--check"], { cwd: HERE, stdio: "inherit" });
} catch {
  failed = true;
}
process.exit(failed ? 1 : 0);
