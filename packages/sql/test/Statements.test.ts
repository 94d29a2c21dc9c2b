/**
 * The SQL itself, checked without a server: every statement each dialect sends, as its compiler writes it, recorded
 * by a client that sends nothing (`support/recordingClient.ts`).
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import type { Dialect } from "../src/internal/programsTable.js"
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
