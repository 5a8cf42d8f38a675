// The size budget: the core, bundled and minified as an application would ship it, is at most
// 10 KB gzipped (React bindings not included; they are a separate entry point).
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import { expect, it } from "vitest";

async function gzipped(entry: string, external: string[]): Promise<number> {
  const out = await build({ entryPoints: [entry], bundle: true, minify: true, format: "esm", write: false, external, target: "es2022" });
  return gzipSync(out.outputFiles[0]!.contents, { level: 9 }).length;
}

it("the core is at most 10 KB minified and gzipped", async () => {
  const core = await gzipped("src/index.ts", ["ws"]);
  const react = await gzipped("src/react.ts", ["ws", "react"]);
  const secure = await gzipped("src/secure.ts", []);
  console.log(
    `weft-client: core ${(core / 1024).toFixed(1)} KB gzipped; with the React bindings ${(react / 1024).toFixed(1)} KB; ` +
      `the secure channel (weft-client/secure) ${(secure / 1024).toFixed(1)} KB`,
  );
  expect(core).toBeLessThanOrEqual(10 * 1024);
});
