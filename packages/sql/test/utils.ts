/** Storage layers per backend for the shared conformance suites: one table (and, for SQLite, one file) per namespace. */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import type { ProgramQueue, ProgramRepository } from "@program-executor/core"
import { Effect, Layer } from "effect"
import { rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { SqlDatabase, SqlProgramQueue, SqlProgramRepository } from "../src/index.js"

export type Backend = "sqlite" | "pg" | "mysql"

export const sqliteFile = (namespace: string) => join(tmpdir(), `program-executor-test-${namespace}.db`)

export const database = (
  backend: Backend,
  namespace: string,
  url?: string
): Layer.Layer<SqlClient.SqlClient, SqlError | SqlDatabase.InvalidDatabaseUrlError> =>
  backend === "sqlite" ? SqlDatabase.layerSqlite(sqliteFile(namespace)) : SqlDatabase.layer(url!)

/** The database, and once the test is over (after the layers on it closed): its table dropped, its file removed. */
export const disposable = (backend: Backend, namespace: string, url?: string) => {
  const dropTable = Layer.scopedDiscard(
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      Effect.addFinalizer(() => sql`DROP TABLE IF EXISTS ${sql(namespace)}`.pipe(Effect.ignore)))
  )
  const removeFile = Layer.scopedDiscard(
    Effect.addFinalizer(() =>
      Effect.sync(() => {
        if (backend !== "sqlite") return
        for (const suffix of ["", "-wal", "-shm"]) rmSync(`${sqliteFile(namespace)}${suffix}`, { force: true })
      })
    )
  )
  return Layer.provideMerge(dropTable, database(backend, namespace, url)).pipe(Layer.provideMerge(removeFile))
}

export const repository = (backend: Backend, url?: string) => (namespace: string) =>
  SqlProgramRepository.layer({ tableName: namespace }).pipe(Layer.provide(disposable(backend, namespace, url)))

export const storage = (backend: Backend, url?: string) =>
(namespace: string): Layer.Layer<ProgramRepository | ProgramQueue, unknown> =>
  Layer.mergeAll(
    SqlProgramRepository.layer({ tableName: namespace }),
    SqlProgramQueue.layer({ tableName: namespace, pollInterval: "250 millis" })
  ).pipe(Layer.provide(disposable(backend, namespace, url)))

/** Runs a raw statement on the namespace's database (manual cancels, rows broken by hand). */
export const execute = (backend: Backend, url?: string) => (namespace: string, statement: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe(statement).raw).pipe(
    Effect.asVoid,
    Effect.provide(database(backend, namespace, url))
  )
