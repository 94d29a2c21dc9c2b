/**
 * `createProgram` inside the application's own `sql.withTransaction` on the same client (invariant 0): a rollback
 * leaves no program and runs nothing; a commit leaves the row, and its wake-up goes out after the commit, so an idle
 * worker runs it at once — not at the SQL queue's next poll, not at the sweeper's `staleAfter` (both set to minutes
 * here, so only a wake-up sent after the commit can pass the bound). Run on every dialect, with either queue.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { expect, it } from "@effect/vitest"
import {
  Executor,
  ExecutorConfig,
  Job,
  JobContext,
  JobLibrary,
  ProgramExecutor,
  type ProgramQueue,
  ProgramRepository
} from "@program-executor/core"
import { Duration, Effect, Exit, Layer, Logger, LogLevel, Option, Schedule, type Scope } from "effect"
import { SqlProgramRepository } from "../../src/index.js"
import { type Backend, disposable } from "../utils.js"

let counter = 0
const uniqueName = (prefix: string) =>
  `${prefix}_${Date.now().toString(36)}_${(counter++).toString(36)}_${Math.random().toString(36).slice(2, 6)}`

/** A worker that could only find a program through a wake-up: the sweeper and the SQL queue's poll wait minutes. */
const workerConfig: ExecutorConfig.ExecutorOptions = {
  ...ExecutorConfig.defaults(),
  workerId: "tx-worker",
  concurrency: 4,
  leaseDuration: Duration.seconds(30),
  heartbeatInterval: Duration.seconds(5),
  retrySchedule: Schedule.spaced("10 millis"),
  sweepInterval: Duration.minutes(5),
  staleAfter: Duration.minutes(5),
  recoveryInterval: Duration.minutes(5),
  shutdownGrace: Duration.millis(200)
}

/** Well under `staleAfter` and the SQL queue's poll: only a wake-up sent after the commit is this fast. */
const promptly = Duration.seconds(5)

/** How long the application's transaction goes on after `createProgram`. */
const applicationWork = Duration.millis(300)

/** Polls until the program is finished, at most `within`. */
const finishedWithin = (runId: string, within: Duration.DurationInput) =>
  Effect.flatMap(ProgramRepository, (repository) =>
    repository.get(runId).pipe(
      Effect.filterOrFail((row) => Option.isSome(row) && row.value.finishedAt !== null, () => "not yet"),
      Effect.retry(Schedule.spaced("20 millis")),
      Effect.timeoutFail({
        duration: within,
        onTimeout: () => new Error(`program ${runId} not finished within ${Duration.format(Duration.decode(within))}`)
      })
    ))

/** Fails loudly instead of hanging when the transaction deadlocks (SQLite before the fix). */
const noDeadlock = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.timeoutFail(effect, {
    duration: "10 seconds",
    onTimeout: () => new Error("createProgram inside the transaction did not return: deadlock")
  })

class Rollback {
  readonly _tag = "Rollback"
}

export const transactionalEnqueueSuite = (
  backend: Backend,
  url: string | undefined,
  queue: (namespace: string) => Layer.Layer<ProgramQueue, unknown, SqlClient.SqlClient>
) => {
  const ran: Array<string> = []
  const job = Job.make(
    "tx_job",
    Effect.flatMap(JobContext, (ctx) => Effect.sync(() => ran.push(ctx.runId)))
  )

  const services = (namespace: string) =>
    Layer.mergeAll(
      ProgramExecutor.layer.pipe(
        Layer.provideMerge(Layer.merge(SqlProgramRepository.layer({ tableName: namespace }), queue(namespace)))
      ),
      JobLibrary.layer(job)
    ).pipe(Layer.provideMerge(disposable(backend, namespace, url) as Layer.Layer<SqlClient.SqlClient, SqlError>))

  const startWorker = Effect.forkScoped(Effect.provideService(Executor.run, ExecutorConfig.ExecutorConfig, workerConfig))

  /** The worker is running and idle: it has finished a program created outside any transaction. */
  const idleWorker = Effect.gen(function*() {
    yield* startWorker
    const warmUp = yield* ProgramExecutor.createProgram({ jobs: ["tx_job"] })
    yield* finishedWithin(warmUp, promptly)
  })

  const run = <A, E>(
    effect: Effect.Effect<
      A,
      E,
      SqlClient.SqlClient | ProgramExecutor | ProgramRepository | ProgramQueue | JobLibrary | Scope.Scope
    >
  ) =>
    Effect.gen(function*() {
      const namespace = uniqueName(`tx_${backend}`)
      return yield* effect.pipe(Effect.scoped, Effect.provide(services(namespace)))
    }).pipe(Logger.withMinimumLogLevel(LogLevel.Warning))

  it.live("rollback: no program is left and nothing runs", () =>
    run(Effect.gen(function*() {
      yield* idleWorker
      const sql = yield* SqlClient.SqlClient
      let rolledBack: string | undefined
      const exit = yield* sql.withTransaction(Effect.gen(function*() {
        rolledBack = yield* ProgramExecutor.createProgram({ jobs: ["tx_job"] })
        return yield* Effect.fail(new Rollback())
      })).pipe(noDeadlock, Effect.exit)
      expect(Exit.isFailure(exit) && JSON.stringify(exit.cause)).toContain("Rollback")
      expect(rolledBack).toBeDefined()
      expect(Option.isNone(yield* ProgramRepository.pipe(Effect.flatMap((r) => r.get(rolledBack!))))).toBe(true)
      // A program created after it finishes: any wake-up of the rolled-back one went out before and was handled.
      const later = yield* ProgramExecutor.createProgram({ jobs: ["tx_job"] })
      yield* finishedWithin(later, promptly)
      expect(ran).not.toContain(rolledBack)
      expect((yield* ProgramRepository.pipe(Effect.flatMap((r) => r.list({ limit: 10 })))).map((p) => p.runId))
        .not.toContain(rolledBack)
    })), { timeout: 60_000 })

  it.live("commit: the program's row exists once the transaction returns", () =>
    run(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const runId = yield* sql.withTransaction(ProgramExecutor.createProgram({ jobs: ["tx_job"] })).pipe(noDeadlock)
      const row = yield* ProgramRepository.pipe(Effect.flatMap((r) => r.get(runId)))
      expect(Option.isSome(row) && row.value.step).toBe(0)
    })), { timeout: 60_000 })

  it.live("commit: an idle worker finishes it well within staleAfter", () =>
    run(Effect.gen(function*() {
      yield* idleWorker
      const sql = yield* SqlClient.SqlClient
      // The application goes on working in its transaction after createProgram (not a wait for an outcome): a
      // wake-up sent before the commit reaches the worker meanwhile, and its claim cannot see the row.
      const runId = yield* sql.withTransaction(
        Effect.tap(ProgramExecutor.createProgram({ jobs: ["tx_job"] }), () => Effect.sleep(applicationWork))
      ).pipe(noDeadlock)
      yield* finishedWithin(runId, promptly)
      expect(ran.filter((id) => id === runId)).toHaveLength(1)
    })), { timeout: 60_000 })
}
