// `pnpm demo --quick`, run as a real process: its summary, and a second run resuming an interrupted one.
import { describe, expect, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"

const root = resolve(import.meta.dirname, "..")

const runDemo = (args: ReadonlyArray<string>, options: { readonly interruptWhen?: (output: string) => boolean } = {}) =>
  new Promise<{ readonly code: number | null; readonly output: string }>((done, fail) => {
    const child = spawn(process.execPath, ["--import", "tsx", "examples/demo.ts", ...args], {
      cwd: root,
      env: { ...process.env, PE_DEMO_QUICK: "" },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    let interrupted = false
    const collect = (chunk: Buffer) => {
      output += chunk.toString()
      if (!interrupted && options.interruptWhen?.(output) === true) {
        interrupted = true
        child.kill("SIGINT")
      }
    }
    child.stdout.on("data", collect)
    child.stderr.on("data", collect)
    child.on("error", fail)
    child.on("close", (code) => done({ code, output }))
  })

const summaryRow = (output: string, label: string) => output.split("\n").find((line) => line.startsWith(`${label} `))

describe("pnpm demo", () => {
  it("runs every program to its end in quick mode and prints the summary", { timeout: 60_000 }, async () => {
    const db = join(mkdtempSync(join(tmpdir(), "pe-demo-")), "demo.db")
    const { code, output } = await runDemo(["--quick", "--db", db])
    expect(code, output).toBe(0)
    expect(output).toContain("summary: 7 programs, 6 finished, 1 errored, 0 in progress")
    expect(summaryRow(output, "retries-then-succeeds")).toMatch(/finished\s+2\/2\s+2\s/)
    expect(summaryRow(output, "checkpoints-progress")).toMatch(/finished\s+2\/2/)
    expect(summaryRow(output, "fails-fatally")).toMatch(/errored\s+1\/3\s+0\s+payload has no email address/)
    expect(summaryRow(output, "child-of-starts-a-child")).toMatch(/finished\s+2\/2/)
  })

  it("resumes the unfinished programs of an interrupted run instead of creating new ones", { timeout: 60_000 }, async () => {
    const db = join(mkdtempSync(join(tmpdir(), "pe-demo-")), "demo.db")
    // The slow mode: interrupt as soon as the first step finished, long before the rest could.
    const first = await runDemo(["--db", db], { interruptWhen: (output) => output.includes("✓") })
    expect(first.output).toContain("stopped: run `pnpm demo` again")
    const created = [...first.output.matchAll(/^created (\S+) ([0-9a-f]{8})/gm)].map((match) => match[2])
    expect(created).toHaveLength(6)

    const second = await runDemo(["--quick", "--db", db])
    expect(second.code, second.output).toBe(0)
    expect(second.output).toMatch(/resuming \d+ unfinished program\(s\)/)
    expect(second.output).not.toContain("created ")
    expect(second.output).toContain("summary: 7 programs, 6 finished, 1 errored, 0 in progress")
    for (const runId of created) expect(second.output).toContain(runId)
  })
})
