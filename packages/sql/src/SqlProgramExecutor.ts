/**
 * Everything an application needs on a database alone, with the table as the queue: `ProgramRepository`,
 * `ProgramQueue` and `ProgramExecutor`. Add a `JobLibrary` and run `Executor.run` for a worker.
 */
import type { SqlError } from "@effect/sql/SqlError"
import { ProgramExecutor, type ProgramQueue, type ProgramRepository, type RepositoryError } from "@program-executor/core"
import type * as Duration from "effect/Duration"
import * as Layer from "effect/Layer"
import type * as Redacted from "effect/Redacted"
import type { InvalidTableNameError } from "./internal/programsTable.js"
import * as SqlDatabase from "./SqlDatabase.js"
import * as SqlProgramQueue from "./SqlProgramQueue.js"
import * as SqlProgramRepository from "./SqlProgramRepository.js"

export interface Options extends SqlDatabase.Options {
  /** `postgres://…`, `mysql://…`, `mariadb://…`, `sqlite:PATH`, `file:PATH`. */
  readonly url: string | Redacted.Redacted
  /** Default `programs`. */
  readonly tableName?: string
  /** The queue's poll when nothing woke it. Default 1 second. */
  readonly pollInterval?: Duration.DurationInput
}

export type Services = ProgramRepository | ProgramQueue | ProgramExecutor

export type LayerError = SqlDatabase.InvalidDatabaseUrlError | SqlError | InvalidTableNameError | RepositoryError

export const layer = (options: Options): Layer.Layer<Services, LayerError> => {
  const tableOptions = {
    ...(options.tableName === undefined ? {} : { tableName: options.tableName }),
    ...(options.pollInterval === undefined ? {} : { pollInterval: options.pollInterval })
  }
  const storage = Layer.mergeAll(SqlProgramRepository.layer(tableOptions), SqlProgramQueue.layer(tableOptions))
  return ProgramExecutor.layer.pipe(
    Layer.provideMerge(storage),
    Layer.provide(SqlDatabase.layer(options.url, options))
  )
}

export interface EmbeddedOptions extends Omit<Options, "url"> {
  /** The SQLite file. Default `./program-executor.db`. */
  readonly filename?: string
}

/** The embedded default: SQLite and the SQL queue in one process. A restart resumes unfinished programs. */
export const layerEmbedded = (options: EmbeddedOptions = {}): Layer.Layer<Services, LayerError> =>
  layer({ ...options, url: `sqlite:${options.filename ?? "./program-executor.db"}` })
