import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as Effect from "effect/Effect"
import { readFile } from "node:fs/promises"
import { extname, resolve, sep } from "node:path"
import { fileURLToPath } from "node:url"

/** `packages/http/dashboard/`: the page and its files, served as they are (no build step). */
export const dashboardDir = fileURLToPath(new URL("../../dashboard/", import.meta.url))

const contentTypes: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".map": "application/json"
}

const notFound = HttpServerResponse.unsafeJson({ _tag: "NotFound", message: "no such file" }, { status: 404 })

/**
 * The file at `relative` inside `root`, or 404. A path that leaves `root` (`..`, an absolute path, an encoded slash)
 * is a 404 too, never a read outside the directory.
 */
export const serveFile = (root: string, relative: string) =>
  Effect.gen(function*() {
    const base = resolve(root)
    const path = resolve(base, relative)
    if (relative.includes("\u0000") || !path.startsWith(base + sep)) return notFound
    const content = yield* Effect.tryPromise(() => readFile(path)).pipe(Effect.option)
    if (content._tag === "None") return notFound
    return HttpServerResponse.uint8Array(content.value, {
      contentType: contentTypes[extname(path)] ?? "application/octet-stream",
      headers: { "cache-control": "no-cache" }
    })
  })
