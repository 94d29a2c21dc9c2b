/** Storage layers per backend for the shared conformance suites: one table (and, for SQLite, one file) per namespace. */
import type { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import type { ProgramQueue, ProgramRepository } from "@program-executor/core"
import { Layer } from "effect"
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

export const repository = (backend: Backend, url?: string) => (namespace: string) =>
  SqlProgramRepository.layer({ tableName: namespace }).pipe(Layer.provide(database(backend, namespace, url)))

export const storage = (backend: Backend, url?: string) =>
(namespace: string): Layer.Layer<ProgramRepository | ProgramQueue, unknown> =>
  Layer.mergeAll(
    SqlProgramRepository.layer({ tableName: namespace }),
    SqlProgramQueue.layer({ tableName: namespace, pollInterval: "250 millis" })
  ).pipe(Layer.provide(database(backend, namespace, url)))
