// `examples/tracing.ts` as a real process: its spans reach an OTLP/HTTP endpoint, and without one it still runs.
import { describe, expect, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import { mkdtempSync } from "node:fs"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"

const root = resolve(import.meta.dirname, "..")

const runExample = (endpoint: string) =>
  new Promise<{ readonly code: number | null; readonly output: string }>((done, fail) => {
    const child = spawn(process.execPath, ["--import", "tsx", "examples/tracing.ts"], {
      cwd: root,
      env: {
        ...process.env,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: endpoint,
        TRACING_EXAMPLE_DB: join(mkdtempSync(join(tmpdir(), "pe-tracing-")), "tracing.db")
      },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    const collect = (chunk: Buffer) => (output += chunk.toString())
    child.stdout.on("data", collect)
    child.stderr.on("data", collect)
    child.on("error", fail)
    child.on("close", (code) => done({ code, output }))
  })

describe("examples/tracing.ts", () => {
  it("exports the step spans and the jobs' spans to the OTLP endpoint", { timeout: 60_000 }, async () => {
    const bodies: Array<string> = []
    const server = createServer((request, response) => {
      let body = ""
      request.on("data", (chunk: Buffer) => (body += chunk.toString("latin1")))
      request.on("end", () => {
        bodies.push(body)
        response.writeHead(200, { "content-type": "application/json" }).end("{}")
      })
    })
    await new Promise<void>((listening) => server.listen(0, "127.0.0.1", listening))
    try {
      const { port } = server.address() as AddressInfo
      const { code, output } = await runExample(`http://127.0.0.1:${port}/v1/traces`)
      expect(code, output).toBe(0)
      expect(output).not.toContain("trace export failed")
      const exported = bodies.join("\n")
      const names = ["program-executor.createProgram", "program-executor.step", "shop-api.orders", "mailer.send"]
      for (const name of names) expect(exported).toContain(name)
    } finally {
      await new Promise((closed) => server.close(closed))
    }
  })

  it("runs to its end without a collector, logging the failed export", { timeout: 60_000 }, async () => {
    // A port nothing listens on: a server bound, then closed.
    const server = createServer()
    await new Promise<void>((listening) => server.listen(0, "127.0.0.1", listening))
    const { port } = server.address() as AddressInfo
    await new Promise((closed) => server.close(closed))
    const { code, output } = await runExample(`http://127.0.0.1:${port}/v1/traces`)
    expect(code, output).toBe(0)
    expect(output).toContain("done")
    expect(output).toContain("trace export failed")
  })
})
