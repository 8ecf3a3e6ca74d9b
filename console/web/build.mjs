// Bundle the console's page into dist/: one script, one stylesheet, the HTML. No CDN: every
// dependency comes from node_modules (pinned by package-lock.json).
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

mkdirSync("dist", { recursive: true });
await build({
  entryPoints: ["src/main.js"],
  bundle: true,
  minify: true,
  sourcemap: true,
  format: "iife",
  target: ["es2020"],
  outfile: "dist/console.js",
  logLevel: "warning",
});
copyFileSync("src/index.html", "dist/index.html");
copyFileSync("src/console.css", "dist/console.css");
