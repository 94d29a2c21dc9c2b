/**
 * Retention at scale, on SQLite, PostgreSQL and MariaDB: 100,000 programs, a third finished and a third errored long
 * ago, a third in progress (created just as long ago). `prune` deletes exactly the old finished and errored ones, in
 * batches, and never a program in progress; each batch is found through an index (checked with EXPLAIN).
 */
import { describe, expect, it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { ProgramExecutor, ProgramQueue, ProgramRepository } from "@program-executor/core"
import { Context, Effect, Layer } from "effect"
import { randomUUID } from "node:crypto"
import { describeWithService } from "../../core/test/utils/services.js"
import { SqlProgramRepository } from "../src/index.js"
import { type Backend, disposable } from "./utils.js"

const total = 100_000
const longAgo = "2020-01-01 00:00:00.000"
const cutoff = new Date("2021-01-01T00:00:00Z")

const suite = (backend: Backend, url?: string) =>
  it.scopedLive("prunes 100,000 rows in index-backed batches, never a program in progress", () =>
    Effect.gen(function*() {
      const tableName = `prune_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`
      const context = yield* Layer.build(disposable(backend, tableName, url))
      const sql = Context.get(context, SqlClient.SqlClient)
      const table = yield* SqlProgramRepository.makeTable({ tableName }).pipe(Effect.provide(context))
      const repository = SqlProgramRepository.fromTable(table)
      const inputs = Array.from({ length: total }, () => ({
        runId: randomUUID(),
        jobs: ["a", "b"],
        programData: {},
        jobData: {}
      }))
      yield* Effect.orDie(repository.insertMany(inputs))
      const t = sql(tableName)
      yield* sql`UPDATE ${t} SET finished_at = ${longAgo}, created_at = ${longAgo} WHERE id % 3 = 0`.raw
      yield* sql`UPDATE ${t} SET errored_at = ${longAgo}, error_message = 'x', created_at = ${longAgo} WHERE id % 3 = 1`.raw
      yield* sql`UPDATE ${t} SET created_at = ${longAgo}, updated_at = ${longAgo} WHERE id % 3 = 2`.raw
      // Recent ones stay: finished and errored now, after the cutoff.
      yield* sql`UPDATE ${t} SET finished_at = created_at WHERE id % 3 = 0 AND id % 100 = 0`.raw
      yield* sql`UPDATE ${t} SET finished_at = NULL, errored_at = ${"2030-01-01 00:00:00.000"} WHERE id % 3 = 1 AND id % 100 = 1`.raw
      if (backend === "pg") yield* sql`ANALYZE ${t}`.raw
      else if (backend === "mysql") yield* sql`ANALYZE TABLE ${t}`.raw
      else yield* sql`ANALYZE`.raw

      const count = (where: string) =>
        Effect.map(
          sql<{ readonly n: number | string }>`SELECT COUNT(*) AS n FROM ${t} WHERE ${sql.literal(where)}`,
          (rows) => Number(rows[0]!.n)
        )
      const inProgress = yield* count("finished_at IS NULL AND errored_at IS NULL")
      const oldFinished = yield* count(`finished_at < '2021-01-01'`)
      const oldErrored = yield* count(`errored_at < '2021-01-01' AND finished_at IS NULL`)
      expect(inProgress).toBeGreaterThan(30_000)
      expect(oldFinished).toBeGreaterThan(30_000)
      expect(oldErrored).toBeGreaterThan(30_000)

      // Each batch through an index, not a scan of the table.
      const plan = (kind: "finished" | "errored") => {
        const [text, params] = table.pruneStatement(kind, cutoff, 1000).compile()
        const explain = backend === "sqlite" ? `EXPLAIN QUERY PLAN ${text}` : `EXPLAIN ${text}`
        return Effect.map(sql.unsafe(explain, params).withoutTransform, (rows) => JSON.stringify(rows))
      }
      const finishedPlan = yield* plan("finished")
      const erroredPlan = yield* plan("errored")
      if (backend === "pg") {
        expect(finishedPlan).toContain(`${tableName}_finished_idx`)
        expect(erroredPlan).toContain(`${tableName}_errored_at_idx`)
        expect(finishedPlan + erroredPlan).not.toContain("Seq Scan")
      } else if (backend === "sqlite") {
        expect(finishedPlan).toContain(`${tableName}_finished_idx`)
        expect(erroredPlan).toContain(`${tableName}_errored_at_idx`)
      } else {
        expect(finishedPlan).toContain(`${tableName}_due_idx`)
        expect(erroredPlan).toContain(`${tableName}_due_idx`)
      }

      const executor = yield* ProgramExecutor.make.pipe(
        Effect.provide(Layer.merge(Layer.succeed(ProgramRepository, repository), ProgramQueue.layerMemory))
      )
      const options = { finishedBefore: cutoff, erroredBefore: cutoff, batchSize: 5_000 }
      expect(yield* executor.prune({ ...options, dryRun: true })).toEqual({
        finished: oldFinished,
        errored: oldErrored,
        dryRun: true
      })
      expect(yield* executor.prune(options)).toEqual({ finished: oldFinished, errored: oldErrored, dryRun: false })
      expect(yield* count("finished_at IS NULL AND errored_at IS NULL")).toBe(inProgress)
      expect(yield* count("1 = 1")).toBe(total - oldFinished - oldErrored)
      expect(yield* count("finished_at IS NOT NULL OR errored_at IS NOT NULL")).toBe(
        total - inProgress - oldFinished - oldErrored
      )
    }), { timeout: 300_000 })

describe("prune at 100,000 rows, SQLite", () => suite("sqlite"))
describeWithService("DATABASE_URL", "prune at 100,000 rows, PostgreSQL", (url) => suite("pg", url))
describeWithService("MYSQL_URL", "prune at 100,000 rows, MariaDB", (url) => suite("mysql", url))
