/**
 * `ProgramRepository` on `@effect/sql`: PostgreSQL, MySQL/MariaDB and SQLite. The table is created when the layer
 * starts; every operation is one conditional statement, guarded as the interface documents.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { ProgramNotFoundError, ProgramRepository, ProgramStateError, type RepositoryError } from "@program-executor/core"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import {
  dialectOf,
  InvalidTableNameError,
  makeStatements,
  type ProgramsTable,
  toRepositoryError,
  validateTableName
} from "./internal/programsTable.js"
import * as afterCommit from "./internal/afterCommit.js"
import { PreparedStatements } from "./internal/preparedStatements.js"

export { InvalidTableNameError }

export interface Options {
  /** Default `programs`. Must match `^[A-Za-z_][A-Za-z0-9_]*$`, at most 63 characters. */
  readonly tableName?: string
}

/** Validates the table name, creates the table when missing, and returns its statements. */
export const makeTable = (
  options: Options = {}
): Effect.Effect<ProgramsTable, InvalidTableNameError | RepositoryError, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const tableName = yield* validateTableName(options.tableName)
    const sql = yield* SqlClient.SqlClient
    const prepared = yield* Effect.serviceOption(PreparedStatements)
    const table = makeStatements(sql, yield* dialectOf(sql), tableName, Option.getOrUndefined(prepared))
    yield* table.migrate
    return table
  })

/** The repository over an existing table's statements (see `makeTable`). */
export const fromTable = (table: ProgramsTable): ProgramRepository["Type"] => {
  const refuse = (runId: string, explain: (row: { readonly finishedAt: Date | null }) => string) =>
    Effect.flatMap(
      Effect.mapError(table.get(runId), toRepositoryError("reading the program")),
      (row) =>
        Effect.fail(
          row === undefined
            ? new ProgramNotFoundError({ runId })
            : new ProgramStateError({ runId, message: explain(row) })
        )
    )
  const state = (row: { readonly finishedAt: Date | null }) => row.finishedAt !== null ? "finished" : "errored"

  return {
    insert: (program) => Effect.mapError(table.insert(program), toRepositoryError("inserting the program")),
    afterCommit: afterCommit.register,
    get: (runId) =>
      table.get(runId).pipe(Effect.map(Option.fromNullable), Effect.mapError(toRepositoryError("reading the program"))),
    list: (query) => Effect.mapError(table.list(query), toRepositoryError("listing programs")),
    claim: (target, options) =>
      table.claim(target, options.owner, options.leaseFor).pipe(
        Effect.map(Option.fromNullable),
        Effect.mapError(toRepositoryError("claiming the step"))
      ),
    extendLease: (lease, leaseFor) =>
      Effect.mapError(table.extendLease(lease, leaseFor), toRepositoryError("extending the lease")),
    writeJobData: (lease, jobName, value) =>
      Effect.mapError(table.writeJobData(lease, jobName, value), toRepositoryError("writing job data")),
    advance: (lease, { finished }) =>
      Effect.mapError(table.advance(lease, finished), toRepositoryError("advancing the step")),
    scheduleRetry: (lease, options) =>
      Effect.mapError(
        table.scheduleRetry(lease, options.errorMessage, options.delay, options.countAttempt),
        toRepositoryError("scheduling the retry")
      ),
    fail: (lease, errorMessage) => Effect.mapError(table.fail(lease, errorMessage), toRepositoryError("failing the step")),
    release: (lease) => table.release(lease).pipe(Effect.asVoid, Effect.mapError(toRepositoryError("releasing the step"))),
    recoverExpired: (limit) =>
      Effect.mapError(table.recoverExpired(limit), toRepositoryError("recovering expired leases")),
    cancel: (runId, reason) =>
      table.cancel(runId, reason).pipe(
        Effect.mapError(toRepositoryError("cancelling the program")),
        Effect.flatMap((row) =>
          row !== undefined ? Effect.succeed(row) : refuse(runId, (row) => `program is already ${state(row)}`)
        )
      ),
    resume: (runId) =>
      table.resume(runId).pipe(
        Effect.mapError(toRepositoryError("resuming the program")),
        Effect.flatMap((row) =>
          row !== undefined
            ? Effect.succeed(row)
            : refuse(runId, (row) =>
              `only an errored program can be resumed; this one is ${
                row.finishedAt !== null ? "finished" : "in_progress"
              }`)
        )
      ),
    findStale: ({ idleFor, limit, queueHead }) =>
      Effect.mapError(table.findStale(idleFor, limit, queueHead), toRepositoryError("looking for stale steps")),
    stats: table.stats.pipe(
      Effect.map((stats) => ({
        inProgress: stats.inProgress,
        errored: stats.errored,
        oldestDueAge: stats.oldestDueAgeSeconds === null
          ? Option.none()
          : Option.some(Duration.seconds(stats.oldestDueAgeSeconds))
      })),
      Effect.mapError(toRepositoryError("counting programs"))
    ),
    insertMany: (programs) => Effect.mapError(table.insertMany(programs), toRepositoryError("inserting the programs")),
    cancelBatch: (filter, reason, page) =>
      Effect.mapError(table.cancelBatch(filter, reason, page), toRepositoryError("cancelling programs")),
    resumeBatch: (filter, page) =>
      Effect.mapError(table.resumeBatch(filter, page), toRepositoryError("resuming programs")),
    pruneBatch: (kind, before, limit) =>
      Effect.mapError(table.pruneBatch(kind, before, limit), toRepositoryError(`pruning ${kind} programs`)),
    countPrunable: (kind, before) =>
      Effect.mapError(table.countPrunable(kind, before), toRepositoryError(`counting ${kind} programs to prune`))
  }
}

export const make = (
  options: Options = {}
): Effect.Effect<ProgramRepository["Type"], InvalidTableNameError | RepositoryError, SqlClient.SqlClient> =>
  Effect.map(makeTable(options), fromTable)

export const layer = (
  options: Options = {}
): Layer.Layer<ProgramRepository, InvalidTableNameError | RepositoryError, SqlClient.SqlClient> =>
  Layer.effect(ProgramRepository, make(options))
