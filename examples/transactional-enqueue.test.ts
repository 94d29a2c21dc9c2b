// examples/transactional-enqueue.ts, run as a real process on an embedded SQLite file.
import { describe, expect, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"

const root = resolve(import.meta.dirname, "..")

describe("examples/transactional-enqueue.ts", () => {
  it("commits an order with its program, which runs; a rolled-back order leaves no program", { timeout: 60_000 }, async () => {
    const db = join(mkdtempSync(join(tmpdir(), "pe-tx-example-")), "example.db")
    const { DATABASE_URL: _ignored, ...env } = process.env
    const { code, output } = await new Promise<{ readonly code: number | null; readonly output: string }>(
      (done, fail) => {
        const child = spawn(process.execPath, ["--import", "tsx", "examples/transactional-enqueue.ts"], {
          cwd: root,
          env: { ...env, PE_EXAMPLE_DB: db },
          stdio: ["ignore", "pipe", "pipe"]
        })
        let output = ""
        child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()))
        child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()))
        child.on("error", fail)
        child.on("close", (code) => done({ code, output }))
      }
    )
    expect(code, output).toBe(0)
    expect(output).toMatch(/committed with program [0-9a-f-]{36}: finished at/)
    expect(output).toContain("order for unicorn rolled back: 0 programs without an order")
  })
})
