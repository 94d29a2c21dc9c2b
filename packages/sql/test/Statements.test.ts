/**
 * The SQL itself, checked without a server: every statement each dialect sends, as its compiler writes it, recorded
 * by a client that sends nothing (`support/recordingClient.ts`).
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Layer } from "effect"
import { type Dialect, makeStatements } from "../src/internal/programsTable.js"
import { SqlProgramQueue, SqlProgramRepository } from "../src/index.js"
import * as RecordingClient from "./support/recordingClient.js"

const dialects: ReadonlyArray<Dialect> = ["pg", "mysql", "sqlite"]

/** A stored row, as every SELECT and RETURNING answers; the catalog answers that nothing exists yet. */
const stored = {
  id: 1,
  run_id: "run",
  program_data: "{}",
  jobs: "[\"a\"]",
  job_data: "{}",
  step: 0,
  step_retry_count: 0,
  finished_at: null,
  errored_at: null,
  error_message: null,
  created_at: "2026-01-01 00:00:00.000",
  updated_at: "2026-01-01 00:00:00.000",
  locked_by: null,
  locked_until: null,
  lease_token: null,
  step_lost_count: 0,
  next_run_at: "2026-01-01 00:00:00.000",
  db_until: "2026-01-01 00:00:30.000"
}
const answer = (sql: string) => /information_schema|pragma_table_info/i.test(sql) ? [] : [stored]

const createTables = (recorded: ReadonlyArray<RecordingClient.Recorded>) =>
  recorded.filter((statement) => /^\s*CREATE TABLE/i.test(statement.sql)).map((statement) => statement.sql)

describe("the migration", () => {
  for (const dialect of dialects) {
    it.effect(`runs once per client and table, however many layers need the table (${dialect})`, () =>
      Effect.gen(function*() {
        const count = <A, E>(layer: Layer.Layer<A, E, SqlClient.SqlClient>) =>
          Effect.gen(function*() {
            const recording = yield* RecordingClient.make(dialect, answer)
            yield* Layer.build(layer).pipe(
              Effect.provideService(SqlClient.SqlClient, recording.client),
              Effect.scoped
            )
            return createTables(recording.recorded)
          })
        // The repository's and the queue's layers on one table, built concurrently, and a second repository after.
        const oneTable = Layer.mergeAll(
          SqlProgramRepository.layer({ tableName: "jobs_a" }),
          SqlProgramQueue.layer({ tableName: "jobs_a" }),
          SqlProgramRepository.layer({ tableName: "jobs_a" })
        )
        expect(yield* count(oneTable)).toHaveLength(1)
        expect(yield* count(Layer.provideMerge(SqlProgramRepository.layer({ tableName: "jobs_a" }), oneTable)))
          .toHaveLength(1)
        // Another table is another migration.
        const twoTables = Layer.merge(oneTable, SqlProgramQueue.layer({ tableName: "jobs_b" }))
        const created = yield* count(twoTables)
        expect(created).toHaveLength(2)
        expect(created.some((sql) => sql.includes("jobs_b"))).toBe(true)
      }))
  }
})

/** Every operation of the table, once, with the recording client. */
const everyStatement = (dialect: Dialect) =>
  Effect.gen(function*() {
    const recording = yield* RecordingClient.make(dialect, answer)
    const table = makeStatements(recording.client, dialect, "programs", recording.prepared)
    const lease = { runId: "run", step: 0, token: "token" }
    yield* table.migrate
    yield* table.insert({ runId: "run", jobs: ["a"], programData: {}, jobData: {} })
    yield* table.get("run")
    yield* table.list({ status: "in_progress", stepRetryCountGte: 1 })
    yield* table.claim({ runId: "run", step: 0 }, "worker", Duration.seconds(30))
    yield* table.claimNext("worker", Duration.seconds(30), 4)
    yield* table.extendLease(lease, Duration.seconds(30))
    yield* table.writeJobData(lease, "a", { done: true })
    yield* table.advance(lease, false)
    yield* table.advance(lease, true)
    yield* table.scheduleRetry(lease, "failed", Duration.seconds(1), true)
    yield* table.fail(lease, "failed")
    yield* table.release(lease)
    yield* table.releaseAll([lease])
    yield* table.recoverExpired(10)
    yield* table.cancel("run", "no longer needed")
    yield* table.resume("run")
    yield* table.findStale(Duration.seconds(5), 10, new Date())
    // Batch creation (its read-back finds nothing in the recording: only the statements matter), search, bulk, prune.
    yield* Effect.either(table.insertMany([
      { runId: "run", jobs: ["a"], programData: {}, jobData: {} },
      { runId: "run2", jobs: ["a"], programData: {}, jobData: {}, idempotencyKey: "k", startAfter: Duration.seconds(1) }
    ]))
    const filter = {
      status: "errored" as const,
      job: "a",
      createdAfter: new Date(0),
      createdBefore: new Date(),
      runIdPrefix: "ru",
      dataContains: { shop: 1, nested: { ok: true } }
    }
    yield* table.list({ ...filter, after: 10 })
    yield* table.cancelBatch(filter, "bulk", { afterId: 0, limit: 10 })
    yield* table.resumeBatch(filter, { afterId: 0, limit: 10 })
    yield* table.pruneBatch("finished", new Date(), 10)
    yield* table.pruneBatch("errored", new Date(), 10)
    yield* table.countPrunable("finished", new Date())
    return recording.recorded.map((statement) => statement.sql)
  })

describe("the mysql dialect", () => {
  // MariaDB has both; MySQL 8 has neither.
  const returning = /\bRETURNING\b/i
  const indexIfNotExists = /CREATE\s+(UNIQUE\s+)?INDEX\s+IF\s+NOT\s+EXISTS/i

  it.effect("sends no RETURNING and no CREATE INDEX IF NOT EXISTS", () =>
    Effect.gen(function*() {
      const statements = yield* everyStatement("mysql")
      expect(statements.filter((sql) => returning.test(sql))).toEqual([])
      expect(statements.filter((sql) => indexIfNotExists.test(sql))).toEqual([])
      // It does create its indexes, once each looked up in the catalog.
      expect(statements.filter((sql) => /^CREATE (UNIQUE )?INDEX /.test(sql))).toHaveLength(5)
      expect(statements.filter((sql) => sql.includes("information_schema.statistics"))).toHaveLength(5)
    }))

  it.effect("the other dialects do use both (the check above can see them)", () =>
    Effect.gen(function*() {
      for (const dialect of ["pg", "sqlite"] as const) {
        const statements = yield* everyStatement(dialect)
        expect(statements.some((sql) => returning.test(sql))).toBe(true)
        expect(statements.some((sql) => indexIfNotExists.test(sql))).toBe(true)
      }
    }))
})
