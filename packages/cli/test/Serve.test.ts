// `program-executor serve` as a real process: it listens, guards with its token, refuses writes when read-only, and
// exits 0 on SIGTERM.
import { describe, expect, it } from "@effect/vitest"
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { serviceUrl } from "../../core/test/utils/services.js"

const bin = resolve(import.meta.dirname, "../bin/program-executor.js")

const baseEnv = (): NodeJS.ProcessEnv => {
  const env = { ...process.env }
  for (const name of ["DATABASE_URL", "AMQP_URL", "PE_TABLE_NAME", "PE_QUEUE_NAME", "PE_DEBUG", "PE_HTTP_TOKEN"]) {
    delete env[name]
  }
  return env
}

interface Served {
  readonly child: ChildProcess
  readonly base: string
  readonly output: () => string
  readonly stop: () => Promise<number | null>
}

/** Starts `serve --port 0 …` and waits for its "Listening on" line (bounded). */
const serve = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = {}): Promise<Served> =>
  new Promise((done, fail) => {
    const cwd = mkdtempSync(join(tmpdir(), "pe-serve-"))
    const child = spawn(process.execPath, [bin, "serve", "--port", "0", ...args], {
      cwd,
      env: { ...baseEnv(), PE_LOG_FORMAT: "json", ...env },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)))
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      fail(new Error(`serve did not listen within 60 s:\n${output}`))
    }, 60_000)
    const onData = (chunk: Buffer) => {
      output += chunk
      const match = /Listening on (http:\/\/[\d.]+:\d+)/.exec(output)
      if (match !== null) {
        clearTimeout(timer)
        done({
          child,
          base: match[1]!,
          output: () => output,
          stop: () => {
            child.kill("SIGTERM")
            return exited
          }
        })
      }
    }
    child.stdout!.on("data", onData)
    child.stderr!.on("data", onData)
    child.on("exit", (code) => {
      clearTimeout(timer)
      fail(new Error(`serve exited with ${code}:\n${output}`))
    })
  })

const request = async (base: string, method: string, path: string, headers: Record<string, string> = {}, body?: unknown) => {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: { ...(body === undefined ? {} : { "content-type": "application/json" }), ...headers },
    ...(body === undefined ? {} : { body: JSON.stringify(body) })
  })
  const text = await response.text()
  return { status: response.status, body: text === "" ? undefined : JSON.parse(text) }
}

const tableName = () => `serve_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 6)}`

const suite = (name: string, backendEnv: () => NodeJS.ProcessEnv) =>
  describe(`serve on ${name}`, () => {
    it("guards every route but /healthz with --token, creates and lists with it, exits 0 on SIGTERM", async () => {
      const served = await serve(["--token", "t0ken"], backendEnv())
      try {
        expect((await request(served.base, "GET", "/healthz")).status).toBe(200)
        expect((await request(served.base, "GET", "/api/programs")).status).toBe(401)
        expect((await request(served.base, "POST", "/api/programs", {}, { jobs: ["a"] })).status).toBe(401)
        const auth = { authorization: "Bearer t0ken" }
        const created = await request(served.base, "POST", "/api/programs", auth, { jobs: ["a"] })
        expect(created.status).toBe(201)
        const listed = await request(served.base, "GET", "/api/programs", auth)
        expect(listed.body.programs.map((program: { runId: string }) => program.runId)).toContain(created.body.runId)
      } finally {
        expect(await served.stop()).toBe(0)
      }
    })

    it("takes the token from PE_HTTP_TOKEN and refuses writes with --read-only", async () => {
      const served = await serve(["--read-only"], { ...backendEnv(), PE_HTTP_TOKEN: "from-env" })
      try {
        expect((await request(served.base, "GET", "/api/programs")).status).toBe(401)
        const auth = { authorization: "Bearer from-env" }
        expect((await request(served.base, "GET", "/api/programs", auth)).status).toBe(200)
        const refused = await request(served.base, "POST", "/api/programs", auth, { jobs: ["a"] })
        expect(refused.status).toBe(403)
        expect((await request(served.base, "GET", "/api/programs", auth)).body.programs).toEqual([])
      } finally {
        expect(await served.stop()).toBe(0)
      }
    })
  })

suite("SQLite", () => ({ DATABASE_URL: `sqlite:${join(mkdtempSync(join(tmpdir(), "pe-serve-db-")), "p.db")}` }))

const pg = serviceUrl("DATABASE_URL")
if (pg !== undefined) suite("PostgreSQL", () => ({ DATABASE_URL: pg, PE_TABLE_NAME: tableName() }))

describe("serve exposure", () => {
  it("warns when bound to 0.0.0.0 without a token", async () => {
    const served = await serve(["--host", "0.0.0.0"], {
      DATABASE_URL: `sqlite:${join(mkdtempSync(join(tmpdir(), "pe-serve-db-")), "p.db")}`
    })
    try {
      expect(served.output()).toContain("without a token")
    } finally {
      expect(await served.stop()).toBe(0)
    }
  })
})
