/**
 * Idempotent creation across processes: two real processes create 10 programs each, all at once, under one key.
 * Exactly one row is stored, every call gets its runId, and a worker runs it once. On SQLite, PostgreSQL and MariaDB.
 */
import { describe, expect, it } from "@effect/vitest"
import { Job, ProgramExecutor, ProgramExecutorTest } from "@program-executor/core"
import { SqlClient } from "@effect/sql"
import { Effect, Layer, Ref } from "effect"
import { spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import { resolve } from "node:path"
import { createInterface } from "node:readline"
import { describeWithService } from "../../core/test/utils/services.js"
import { awaitProgram } from "../../core/test/conformance/ExecutorConformance.js"
import { type Backend, disposable, sqliteFile, storage } from "./utils.js"

const script = resolve(import.meta.dirname, "support/createWithKey.ts")

interface Creator {
  readonly ready: Promise<void>
  readonly go: () => void
  readonly runIds: Promise<ReadonlyArray<string>>
}

const creator = (url: string, table: string, key: string): Creator => {
  const child = spawn(process.execPath, ["--import", "tsx", script], {
    cwd: resolve(import.meta.dirname, ".."),
    env: { ...process.env, PE_URL: url, PE_TABLE: table, PE_KEY: key, PE_COUNT: "10" },
    stdio: ["pipe", "pipe", "pipe"]
  })
  let stderr = ""
  child.stderr.on("data", (chunk) => (stderr += chunk))
  const lines = createInterface({ input: child.stdout })
  const output: Array<string> = []
  let readyLine: () => void = () => {}
  const ready = new Promise<void>((done) => (readyLine = done))
  lines.on("line", (line) => {
    if (line === "ready") readyLine()
    else output.push(line)
  })
  const runIds = new Promise<ReadonlyArray<string>>((done, fail) =>
    child.on("close", (code) =>
      code === 0 && output.length === 1
        ? done(JSON.parse(output[0]!))
        : fail(new Error(`creator exited with ${code}: ${stderr}${output.join("\n")}`)))
  )
  ready.catch(() => {})
  return { ready: Promise.race([ready, runIds.then(() => {})]), go: () => child.stdin.write("go\n"), runIds }
}

const suite = (backend: Backend, url?: string) =>
  it.scopedLive("20 concurrent creates with one key from two processes: one row, one run, one runId", () =>
    Effect.gen(function*() {
      const table = `idem_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`
      const key = `order-${randomUUID()}`
      const runs = yield* Ref.make(0)
      const once = Job.make("once", Ref.update(runs, (n) => n + 1))
      // The table exists before the processes start (the layer below creates it and drops it at the end).
      const context = yield* Layer.build(
        Layer.merge(
          ProgramExecutorTest.layer({ jobs: [once], storage: storage(backend, url)(table), workers: 0 }),
          disposable(backend, table, url)
        )
      )
      const processUrl = backend === "sqlite" ? `sqlite:${sqliteFile(table)}` : url!
      const creators = [creator(processUrl, table, key), creator(processUrl, table, key)]
      yield* Effect.promise(() => Promise.all(creators.map((c) => c.ready)))
      for (const c of creators) c.go()
      const runIds = (yield* Effect.promise(() => Promise.all(creators.map((c) => c.runIds)))).flat()
      expect(runIds).toHaveLength(20)
      expect(new Set(runIds).size).toBe(1)
      const rows = yield* Effect.flatMap(SqlClient.SqlClient, (sql) =>
        sql<{ readonly run_id: string; readonly idempotency_key: string }>`SELECT run_id, idempotency_key FROM ${
          sql(table)
        }`.withoutTransform).pipe(Effect.provide(context))
      expect(rows).toEqual([{ run_id: runIds[0], idempotency_key: key }])
      // A worker runs it, once.
      yield* Effect.gen(function*() {
        const worker = yield* Layer.build(
          ProgramExecutorTest.layer({ jobs: [once], storage: storage(backend, url)(table), workers: 1 })
        )
        const program = yield* awaitProgram(runIds[0]!).pipe(Effect.provide(worker))
        expect(program.finishedAt).not.toBeNull()
        expect(yield* ProgramExecutor.list().pipe(Effect.provide(worker), Effect.map((all) => all.length))).toBe(1)
      }).pipe(Effect.scoped)
      expect(yield* Ref.get(runs)).toBe(1)
    }), { timeout: 120_000 })

describe("idempotent creation across processes, SQLite", () => suite("sqlite"))
describeWithService("DATABASE_URL", "idempotent creation across processes, PostgreSQL", (url) => suite("pg", url))
describeWithService("MYSQL_URL", "idempotent creation across processes, MariaDB", (url) => suite("mysql", url))
