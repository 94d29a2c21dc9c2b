/**
 * Where programs live, chosen from URLs the way every entry point (the CLI, the demo, the examples) does it:
 *
 * - no `databaseUrl`: the embedded default, a SQLite file with the SQL queue, in one process;
 * - a `databaseUrl` only: that database, which is also the queue (no broker);
 * - a `databaseUrl` and an `amqpUrl`: the database for state, RabbitMQ for wake-ups.
 */
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"
import type { ProgramQueue, ProgramRepository } from "@program-executor/core"
import { ProgramExecutor } from "@program-executor/core"
import { SqlDatabase, SqlProgramExecutor, SqlProgramRepository } from "@program-executor/sql"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import type * as Schedule from "effect/Schedule"

export interface BackendOptions {
  /** postgres://…, mysql://…, sqlite:PATH or file:PATH. Unset: the embedded SQLite file. */
  readonly databaseUrl?: string | undefined
  /** amqp://… Unset: the database is the queue. */
  readonly amqpUrl?: string | undefined
  /** The programs table (default `programs`). */
  readonly tableName?: string | undefined
  /** The RabbitMQ queue (only with `amqpUrl`). */
  readonly queueName?: string | undefined
  /** The SQLite file of the embedded default. */
  readonly filename?: string | undefined
  /** Connection attempts to a database that does not answer. Default: keep trying for up to 2 minutes. */
  readonly connectRetry?: Schedule.Schedule<unknown, unknown> | undefined
}

export const defaultFilename = "./program-executor.db"

const defined = <A extends Record<string, unknown>>(value: A): { [K in keyof A]: Exclude<A[K], undefined> } =>
  Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as any

/** Describes the backend without secrets, for logs and `--help`-style messages. */
export const describe = (options: BackendOptions): string => {
  const table = options.tableName ?? "programs"
  if (options.databaseUrl === undefined) return `SQLite ${options.filename ?? defaultFilename} (table ${table})`
  const database = SqlDatabase.redactUrl(options.databaseUrl)
  return options.amqpUrl === undefined
    ? `${database} (table ${table}, SQL queue)`
    : `${database} (table ${table}) + ${SqlDatabase.redactUrl(options.amqpUrl)} (queue ${options.queueName ?? "default"})`
}


export const layer = (
  options: BackendOptions
): Layer.Layer<ProgramExecutor | ProgramRepository | ProgramQueue, unknown> => {
  if (options.databaseUrl === undefined) {
    return SqlProgramExecutor.layerEmbedded(
      defined({
        filename: options.filename ?? defaultFilename,
        tableName: options.tableName,
        connectRetry: options.connectRetry
      })
    ) as Layer.Layer<ProgramExecutor | ProgramRepository | ProgramQueue, unknown>
  }
  if (options.amqpUrl === undefined) {
    return SqlProgramExecutor.layer(defined({ url: options.databaseUrl, tableName: options.tableName, connectRetry: options.connectRetry })) as Layer.Layer<
      ProgramExecutor | ProgramRepository | ProgramQueue,
      unknown
    >
  }
  const repository = SqlProgramRepository.layer(defined({ tableName: options.tableName })).pipe(
    Layer.provide(SqlDatabase.layer(options.databaseUrl, defined({ connectRetry: options.connectRetry })))
  )
  const queue = AmqpProgramQueue.layer(defined({ queueName: options.queueName })).pipe(
    Layer.provide(AmqpConnection.layer({ url: Redacted.make(options.amqpUrl) }))
  )
  return ProgramExecutor.layer.pipe(Layer.provideMerge(Layer.merge(repository, queue))) as Layer.Layer<
    ProgramExecutor | ProgramRepository | ProgramQueue,
    unknown
  >
}
