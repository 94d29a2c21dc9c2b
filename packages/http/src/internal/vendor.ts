/**
 * The dashboard's one library: Preact with its hooks and htm in a single ES module (`htm/preact/standalone`), served
 * from the installed `htm` package, so the page needs no build step and no CDN.
 */
import { createRequire } from "node:module"
import { dirname, join } from "node:path"

/**
 * The folder of the bundle, found the way Node finds the package (hoisted or not). `htm`'s exports map has no
 * `./package.json`, so the folder is reached from its main file (`dist/htm.js`).
 */
export const htmPreactDir = join(dirname(createRequire(import.meta.url).resolve("htm")), "..", "preact")

/** The ES module build of the bundle (the exports map's `browser` entry). */
export const htmPreactFile = "standalone.module.js"

/** Where the page imports it from (`dashboard/app.js`). */
export const htmPreactRoute = "/dashboard/vendor/htm-preact.js"
