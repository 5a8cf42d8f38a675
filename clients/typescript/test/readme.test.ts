// The README's examples: the Node one runs against a real `weft serve` (imported as
// "weft-client", the package referring to itself), the React one is type-checked and bundled.
import { build } from "esbuild";
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, expect, it } from "vitest";
import { startServe, type Serve } from "./harness.js";

const run = promisify(execFile);
const pkg = fileURLToPath(new URL("..", import.meta.url));
const readme = readFileSync(pkg + "README.md", "utf8");
const block = (lang: string, after: string) => {
  const from = readme.indexOf(after);
  const m = new RegExp("```" + lang + "\\n([\\s\\S]*?)```").exec(readme.slice(from));
  if (from < 0 || !m) throw new Error(`no ${lang} block after "${after}" in README.md`);
  return m[1]!;
};

let serve: Serve;
beforeAll(async () => {
  serve = await startServe();
});
afterAll(async () => serve?.stop());

it("the Node example runs and says what it says it does", async () => {
  const file = pkg + ".readme-example.mjs";
  writeFileSync(file, block("ts", "## Use it from Node or a browser"));
  try {
    const { stdout } = await run(process.execPath, [file], {
      env: { ...process.env, WEFT_URL: `ws://127.0.0.1:${serve.port}/ws` },
      timeout: 20000,
    });
    expect(stdout).toContain("state: connected");
    expect(stdout).toContain("published at offset 1");
    expect(stdout).toContain("event 1: { text: 'hello' }");
    expect(stdout).toContain("present: [ 'readme' ]");
    expect(stdout).toMatch(/round trip: [\d.]+ ms/);
    expect(stdout).toContain("state: closed closed by the client");
  } finally {
    rmSync(file, { force: true });
  }
});

it("the React example type-checks and bundles", async () => {
  const file = pkg + ".readme-example.tsx";
  writeFileSync(file, block("tsx", "## React"));
  try {
    const tsc = pkg + "node_modules/typescript/bin/tsc";
    const flags = ["--noEmit", "--strict", "--jsx", "react-jsx", "--module", "es2022", "--moduleResolution", "bundler"];
    await run(process.execPath, [tsc, ...flags, "--target", "es2022", "--lib", "es2022,dom", "--skipLibCheck", file], { cwd: pkg }).catch(
      (e: { stdout?: string }) => {
        throw new Error(`tsc: ${e.stdout}`);
      },
    );
    const out = await build({ entryPoints: [file], bundle: true, write: false, jsx: "automatic", external: ["ws"], logLevel: "silent" });
    expect(out.outputFiles[0]!.text).toContain("WeftProvider");
  } finally {
    rmSync(file, { force: true });
  }
});

it("installed into an app as the README says, the React example bundles with one React", async () => {
  const app = mkdtempSync(tmpdir() + "/weft-client-app-");
  try {
    writeFileSync(app + "/package.json", JSON.stringify({ name: "app", private: true, type: "module" }));
    const npm = ["install", "--install-links", "--prefer-offline", "--no-audit", "--no-fund", "--silent"];
    await run("npm", [...npm, pkg.replace(/\/$/, ""), "react@19.3.1", "react-dom@19.3.1"], { cwd: app, timeout: 180000 });
    writeFileSync(app + "/app.tsx", block("tsx", "## React"));
    const out = await build({
      absWorkingDir: app,
      entryPoints: ["app.tsx"],
      bundle: true,
      write: false,
      metafile: true,
      jsx: "automatic",
      external: ["ws"],
      logLevel: "silent",
      define: { "process.env.NODE_ENV": '"production"' },
    });
    const reacts = Object.keys(out.metafile.inputs).filter((p) => /(^|\/)node_modules\/react\/index\.js$/.test(p));
    expect(reacts).toEqual(["node_modules/react/index.js"]);
  } finally {
    rmSync(app, { recursive: true, force: true });
  }
});
