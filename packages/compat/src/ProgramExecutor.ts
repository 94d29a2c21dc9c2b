/**
 * A Promise facade for code that does not use Effect, shaped like the old `@emartech/program-executor`:
 *
 * ```js
 * const executor = ProgramExecutor.create({ databaseUrl, amqpUrl, tableName: "programs", queueName: "programs" })
 * const runId = await executor.createProgram({ jobs: ["first_job"], programData: {}, jobData: {} })
 * executor.on("programError", ({ message, error }) => log(message, error))
 * await executor.processPrograms({ first_job: FirstJob })
 * await executor.close()
 * ```
 *
 * Its defaults are the old library's where they differ from the core's: a job the library lacks is skipped with a
 * warning, a retryable failure is retried without limit every second, one step runs at a time per process.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"
import type { Program, ProgramRecord } from "@program-executor/core"
import {
  Executor,
  ExecutorConfig,
  Job,
  JobLibrary,
  ProgramExecutor as ProgramExecutorService,
  type ProgramEvent,
  ProgramEvents,
  type ProgramQueue,
  ProgramRepository
} from "@program-executor/core"
import { SqlDatabase, SqlProgramExecutor, SqlProgramQueue, SqlProgramRepository } from "@program-executor/sql"
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { EventEmitter } from "node:events"

export interface ProgramExecutorConfig {
  /** postgres://…, mysql://…, sqlite:PATH or file:PATH. Neither this nor `sqlClient`: the embedded SQLite file. */
  readonly databaseUrl?: string
  /** An `@effect/sql` `SqlClient` you already have (instead of `databaseUrl`). */
  readonly sqlClient?: SqlClient.SqlClient
  /** RabbitMQ for wake-ups. Unset: the database is the queue. */
  readonly amqpUrl?: string
  /** The programs table, created when missing. */
  readonly tableName: string
  /** The RabbitMQ queue (with `amqpUrl`). */
  readonly queueName?: string
  /** The SQLite file of the embedded default. Default `./program-executor.db`. */
  readonly filename?: string
  /** Steps run at once by `processPrograms`. Default 1, as the old library's prefetch. */
  readonly concurrency?: number
  /** Attempts of a step before a retryable failure becomes fatal. Default `Infinity`, as the old library. */
  readonly maxAttempts?: number
  /** Delay before a retry, in milliseconds. Default 1000, as the old library. */
  readonly retryDelayMs?: number
  /** A job the library lacks: `"skip"` (default, as the old library: a warning, then the next job) or `"fail"`. */
  readonly onUnknownJob?: "skip" | "fail"
  /** Further executor options (lease, heartbeat, sweeper…), see the README's configuration reference. */
  readonly executor?: Partial<ExecutorConfig.ExecutorOptions>
}

/** An old-style job class: `static create(programData)` returning an object with `execute(message, jobDataHandler)`. */
export type JobClass = Job.SeedJobClass

/** The old library's job library: job classes keyed by job name. */
export type JobLibraryObject = Readonly<Record<string, JobClass>>

/** What `programError` listeners receive, as in the old library. */
export interface ProgramErrorEvent {
  /** The old library's queue message: `{ jobs, programData, runId }`, `jobs[0]` the failing job. */
  readonly message: { readonly jobs: ReadonlyArray<string>; readonly programData: Record<string, unknown>; readonly runId: string }
  /** An `Error` with the failure's message; `retryable: true` when the step will be retried. */
  readonly error: Error & { readonly retryable?: boolean }
}

type Services = ProgramExecutorService | ProgramRepository | ProgramQueue

const backendLayer = (config: ProgramExecutorConfig): Layer.Layer<Services, unknown> => {
  const tableName = { tableName: config.tableName }
  if (config.sqlClient === undefined && config.databaseUrl === undefined && config.amqpUrl === undefined) {
    return SqlProgramExecutor.layerEmbedded({
      ...tableName,
      ...(config.filename === undefined ? {} : { filename: config.filename })
    }) as Layer.Layer<Services, unknown>
  }
  const sql = config.sqlClient !== undefined
    ? Layer.succeed(SqlClient.SqlClient, config.sqlClient)
    : SqlDatabase.layer(config.databaseUrl ?? `sqlite:${config.filename ?? "./program-executor.db"}`)
  const repository = SqlProgramRepository.layer(tableName)
  const queue: Layer.Layer<ProgramQueue, unknown, SqlClient.SqlClient> = config.amqpUrl === undefined
    ? SqlProgramQueue.layer(tableName)
    : AmqpProgramQueue.layer(config.queueName === undefined ? {} : { queueName: config.queueName }).pipe(
      Layer.provide(AmqpConnection.layer(config.amqpUrl))
    )
  return ProgramExecutorService.layer.pipe(
    Layer.provideMerge(Layer.merge(repository, queue)),
    Layer.provide(sql)
  ) as Layer.Layer<Services, unknown>
}

/** The failure itself when it is an `Error` (callers can inspect it); otherwise an `Error` with its text. */
const asError = (failure: unknown): Error =>
  failure instanceof Error ? failure : new Error(String(failure), { cause: failure })

/** Rejects with the failure itself (an `Error`), not a wrapper, so callers can inspect it. */
const toPromise = <A, E, R>(runtime: ManagedRuntime.ManagedRuntime<R, unknown>, effect: Effect.Effect<A, E, R>) =>
  runtime.runPromiseExit(effect).then((exit) =>
    Exit.isSuccess(exit) ? exit.value : Promise.reject(asError(Cause.squash(exit.cause)))
  )

export class ProgramExecutor extends EventEmitter {
  /** As the old library: `ProgramExecutor.create(config)`. Nothing connects until the first call. */
  static create(config: ProgramExecutorConfig): ProgramExecutor {
    return new ProgramExecutor(config)
  }

  readonly #config: ProgramExecutorConfig
  readonly #runtime: ManagedRuntime.ManagedRuntime<Services, unknown>
  #workers: Array<Fiber.RuntimeFiber<unknown, unknown>> = []
  #scopes: Array<Scope.CloseableScope> = []
  #closed = false

  constructor(config: ProgramExecutorConfig) {
    super()
    this.#config = config
    this.#runtime = ManagedRuntime.make(backendLayer(config).pipe(Layer.provideMerge(ProgramEvents.layer())))
  }

  /** Stores the program and queues its first job; resolves with its runId (a UUID). */
  createProgram(program: Program.CreateProgramInput): Promise<string> {
    return toPromise(this.#runtime, ProgramExecutorService.createProgram(program))
  }

  /**
   * Stores several programs at once (multi-row inserts, all or none) and queues their first jobs; resolves with their
   * runIds in order. Each may carry an `idempotencyKey`, `startAt` or `startAfter`, as `createProgram` may.
   */
  createPrograms(programs: ReadonlyArray<Program.CreateProgramInput>): Promise<ReadonlyArray<string>> {
    return toPromise(this.#runtime, ProgramExecutorService.createPrograms(programs))
  }

  /** The program's row, or `undefined`. */
  getProgram(runId: string): Promise<ProgramRecord | undefined> {
    return toPromise(this.#runtime, Effect.map(ProgramExecutorService.get(runId), Option.getOrUndefined))
  }

  /** Sets `errored_at` (the old library's way to stop a program, without writing SQL). */
  cancelProgram(runId: string, reason?: string): Promise<void> {
    return toPromise(this.#runtime, Effect.asVoid(ProgramExecutorService.cancel(runId, reason)))
  }

  /**
   * Starts executing programs with the jobs of `jobLibrary` (`{ [jobName]: JobClass }`) in this process, until
   * `close()`. Resolves once the worker's configuration is valid and its database and broker are connected; rejects
   * with the reason otherwise (an invalid option such as `concurrency: 0`, a duplicate job, an unreachable database).
   */
  async processPrograms(jobLibrary: JobLibraryObject): Promise<void> {
    if (this.#closed) throw new Error("this ProgramExecutor is closed")
    const jobs = Object.entries(jobLibrary).map(([name, jobClass]) => Job.fromClass(jobClass, { name }))
    const config = this.#config
    const options: Partial<ExecutorConfig.ExecutorOptions> = {
      concurrency: config.concurrency ?? 1,
      maxAttempts: config.maxAttempts ?? Infinity,
      retrySchedule: Schedule.spaced(Duration.millis(config.retryDelayMs ?? 1000)),
      onUnknownJob: config.onUnknownJob ?? "skip",
      ...config.executor
    }
    const worker = Layer.merge(JobLibrary.layer(...jobs), ExecutorConfig.layer(options))
    const emitErrors = this.#emitErrors
    const started = await this.#runtime.runPromiseExit(Effect.gen(function*() {
      const scope = yield* Scope.make()
      // The worker's own layers are built here, not inside its fiber: a configuration that cannot run rejects this
      // call instead of ending a fiber nobody awaits.
      const context = yield* Layer.buildWithScope(worker, scope).pipe(
        Effect.onError(() => Scope.close(scope, Exit.void))
      )
      // `subscribe` has subscribed when it returns: no failure of the first steps is missed.
      const events = yield* ProgramEvents.subscribe.pipe(Scope.extend(scope))
      const listener = yield* Effect.forkDaemon(emitErrors(events))
      const executor = yield* Effect.forkDaemon(Effect.provide(Executor.run, context))
      return { scope, fibers: [executor, listener] }
    }))
    if (Exit.isFailure(started)) throw asError(Cause.squash(started.cause))
    this.#workers.push(...started.value.fibers)
    this.#scopes.push(started.value.scope)
  }

  /** Maps failures onto `programError`, as the old library emitted them: retries and fatal errors, not ignorable. */
  readonly #emitErrors = (events: Stream.Stream<ProgramEvent>) =>
    events.pipe(
      Stream.runForEach((event) =>
        Effect.gen(this, function*() {
          if (event._tag !== "RetryScheduled" && !(event._tag === "ProgramErrored" && !event.ignorable)) return
          if (this.listenerCount("programError") === 0) return
          const program = yield* ProgramExecutorService.get(event.runId).pipe(Effect.map(Option.getOrUndefined))
          const error = Object.assign(
            new Error(event.errorMessage),
            event._tag === "RetryScheduled" ? { retryable: true } : {}
          )
          const payload: ProgramErrorEvent = {
            message: {
              jobs: program?.jobs.slice(event.step) ?? [event.job],
              programData: program?.programData ?? {},
              runId: event.runId
            },
            error
          }
          this.emit("programError", payload)
        }).pipe(Effect.catchAllCause((cause) => Effect.logWarning("could not emit programError", cause)))
      )
    )

  /** Stops the worker (running jobs get the shutdown grace period) and closes the connections. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    const workers = this.#workers
    this.#workers = []
    const scopes = this.#scopes
    this.#scopes = []
    await Effect.runPromise(Fiber.interruptAll(workers))
    await Effect.runPromise(Effect.forEach(scopes, (scope) => Scope.close(scope, Exit.void), { discard: true }))
    await this.#runtime.dispose()
  }
}
