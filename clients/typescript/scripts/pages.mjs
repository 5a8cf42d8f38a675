// Builds the pages `weft serve` embeds (include_str!) from their sources here: each
// pages/<name>.ts is bundled with the SDK (esbuild: iife, minified, es2020) and inlined into
// pages/<name>.html at its `<!-- weft:script -->` marker, giving
// crates/weft-server/assets/<name>.html.
//
// usage: node scripts/pages.mjs            write the assets
//        node scripts/pages.mjs --check    exit 1 when the committed assets are not current
import { build } from "esbuild";
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const HERE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const ASSETS = path.resolve(HERE, "../../crates/weft-server/assets");
const PAGES = ["chat", "dashboard"];
const MARKER = "<!-- weft:script -->";

/** The built page: its template with the bundled, minified script in place of the marker. */
export async function buildPage(name) {
  const template = await readFile(path.join(HERE, "pages", name + ".html"), "utf8");
  const parts = template.split(MARKER);
  if (parts.length !== 2) throw new Error(`pages/${name}.html must hold the marker ${MARKER} exactly once`);
  const out = await build({
    entryPoints: [path.join(HERE, "pages", name + ".ts")],
    bundle: true,
    minify: true,
    format: "iife",
    target: "es2020",
    platform: "browser",
    external: ["ws"],
    write: false,
    legalComments: "none",
    charset: "utf8",
    logLevel: "warning",
  });
  const js = out.outputFiles[0].text.trim();
  // Inline in <script>: nothing in it may end the element or open an HTML comment.
  if (/<\/script|<!--/i.test(js)) throw new Error(`the script of ${name} holds "</script" or "<!--"`);
  return parts[0] + "<script>" + js + "</script>" + parts[1];
}

async function main() {
  const check = process.argv.includes("--check");
  const stale = [];
  for (const name of PAGES) {
    const html = await buildPage(name);
    const file = path.join(ASSETS, name + ".html");
    if (check) {
      const now = await readFile(file, "utf8").catch(() => null);
      if (now !== html) stale.push(path.relative(process.cwd(), file));
    } else {
      await writeFile(file, html);
      const gz = gzipSync(html, { level: 9 }).length;
      console.log(`${path.relative(process.cwd(), file)}: ${(Buffer.byteLength(html) / 1024).toFixed(1)} KB, ${(gz / 1024).toFixed(1)} KB gzipped`);
    }
  }
  if (stale.length) {
    console.error(`not current with clients/typescript/pages and src: ${stale.join(", ")}\nrun npm run build in clients/typescript`);
    process.exit(1);
  }
  if (check) console.log("the embedded pages are current");
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
