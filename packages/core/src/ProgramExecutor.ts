/**
 * The API an application uses: create programs, look at them, cancel and resume them. Workers run them
 * (`Executor.run`); this service only writes rows and publishes wake-ups, so it can live in any process.
 */
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import type * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import { Buffer } from "node:buffer"
import { randomUUID } from "node:crypto"
import * as jsonValue from "./internal/jsonValue.js"
import * as metrics from "./internal/metrics.js"
import { retryOnFailure } from "./internal/retry.js"
import { withSpanIfTraced } from "./internal/tracing.js"
import {
  CreateProgramInput,
  defaultBatchSize,
  defaultListLimit,
  filterProblem,
  InvalidProgramError,
  type ListQuery,
  type NewProgram,
  type ProgramFilter,
  type ProgramNotFoundError,
  type ProgramRecord,
  type ProgramStateError,
  type PruneOptions,
  type PruneResult
} from "./Program.js"
import { ProgramEvent, ProgramEvents } from "./ProgramEvents.js"
import { ProgramQueue, QueueError } from "./ProgramQueue.js"
import { ProgramRepository, type RepositoryError } from "./ProgramRepository.js"

export interface ProgramExecutorService {
  /**
   * Validates, stores the program, then publishes its first step; returns the runId. Invalid input fails with
   * `InvalidProgramError` and writes nothing. Once stored the program will run: a publish that fails afterwards is
   * logged and left to the sweeper, never reported as a failed creation.
   */
  readonly createProgram: (input: CreateProgramInput) => Effect.Effect<string, InvalidProgramError | RepositoryError>
  readonly get: (runId: string) => Effect.Effect<Option.Option<ProgramRecord>, RepositoryError>
  readonly list: (query?: ListQuery) => Effect.Effect<ReadonlyArray<ProgramRecord>, InvalidProgramError | RepositoryError>
  /** Sets `errored_at` with the reason. A running job is interrupted at its next heartbeat. */
  readonly cancel: (
    runId: string,
    reason?: string
  ) => Effect.Effect<ProgramRecord, RepositoryError | ProgramNotFoundError | ProgramStateError>
  /** Clears the error of an errored program and runs it again from the step where it failed. */
  readonly resume: (
    runId: string
  ) => Effect.Effect<ProgramRecord, RepositoryError | ProgramNotFoundError | ProgramStateError>
  /**
   * `createProgram` for many programs at once: the same validation (nothing is written if any input is invalid), all
   * stored or none, in multi-row inserts; then their first steps are published. Returns the runIds in input order
   * (for an input whose `idempotencyKey` was taken, the existing program's).
   */
  readonly createPrograms: (
    inputs: ReadonlyArray<CreateProgramInput>
  ) => Effect.Effect<ReadonlyArray<string>, InvalidProgramError | RepositoryError>
  /**
   * Cancels every program in progress matching `filter`, in batches of one guarded statement each (a program that
   * finishes or fails meanwhile is left as it is). Returns how many it cancelled.
   */
  readonly cancelMany: (
    filter: ProgramFilter,
    reason?: string
  ) => Effect.Effect<number, InvalidProgramError | RepositoryError>
  /** Resumes every errored program matching `filter`, in guarded batches as `cancelMany`. Returns how many. */
  readonly resumeMany: (filter: ProgramFilter) => Effect.Effect<number, InvalidProgramError | RepositoryError>
  /**
   * Deletes finished programs finished before `finishedBefore` and errored ones errored before `erroredBefore`, in
   * batches (each its own short statement). A program in progress is never deleted. `dryRun` only counts.
   */
  readonly prune: (options: PruneOptions) => Effect.Effect<PruneResult, InvalidProgramError | RepositoryError>
}

const decodeInput = Schema.decodeUnknown(CreateProgramInput, { errors: "all", onExcessProperty: "error" })

const invalid = (message: string) => new InvalidProgramError({ message })

/**
 * The largest program `createProgram` stores by default: its jobs, programData and jobData as UTF-8 JSON. Every claim
 * of every step reads the row back, so a program is a handle on data, not the data itself.
 */
export const defaultMaxProgramBytes = 1024 * 1024

export interface ProgramExecutorOptions {
  /** Larger programs (jobs, programData and jobData as UTF-8 JSON) are refused. Default 1 MiB. */
  readonly maxProgramBytes?: number
}

const formatPath = (path: ReadonlyArray<PropertyKey>): string =>
  path.map((key, index) =>
    typeof key === "number" ? `[${key}]` : typeof key === "string" && index > 0 ? `.${key}` : String(key)
  ).join("")

/** One line per problem, each with its path: `jobs[1]: a job name cannot start with "-"`. */
const formatParseError = (error: ParseResult.ParseError): string =>
  ParseResult.ArrayFormatter.formatErrorSync(error)
    .map((issue) => issue.path.length === 0 ? issue.message : `${formatPath(issue.path)}: ${issue.message}`)
    .join("; ")

/**
 * Checks what the schema cannot, before anything is written: job data keyed by jobs of the program, every value one
 * that JSON stores unchanged on every dialect (see `internal/jsonValue`), and the stored size.
 */
const validate = (input: unknown, maxProgramBytes: number) =>
  Effect.gen(function*() {
    const decoded = yield* decodeInput(input).pipe(
      Effect.mapError((error) => invalid(`invalid program: ${formatParseError(error)}`))
    )
    const jobData = decoded.jobData ?? {}
    for (const key of Object.keys(jobData)) {
      if (!decoded.jobs.includes(key)) {
        return yield* invalid(`invalid program: jobData has an entry for "${key}", which is not one of its jobs`)
      }
    }
    const programData = decoded.programData ?? {}
    // The caller's own values, not the decoded copies: a Map or a class instance given as programData is copied into
    // a plain object by the decoder, and its cycles would be found one level late.
    const given = input as { readonly programData?: unknown; readonly jobData?: unknown }
    for (const what of ["programData", "jobData"] as const) {
      const problem = jsonValue.findProblem(given[what] ?? {}, what)
      if (problem !== undefined) return yield* invalid(`invalid program: ${problem}`)
    }
    const bytes = Buffer.byteLength(JSON.stringify(decoded.jobs)) + Buffer.byteLength(JSON.stringify(programData)) +
      Buffer.byteLength(JSON.stringify(jobData))
    if (bytes > maxProgramBytes) {
      return yield* invalid(
        `invalid program: it takes ${bytes} bytes as JSON, more than maxProgramBytes (${maxProgramBytes}); store large ` +
          "data elsewhere and pass a reference"
      )
    }
    if (decoded.startAt !== undefined && decoded.startAfter !== undefined) {
      return yield* invalid("invalid program: give startAt or startAfter, not both")
    }
    const valid: Omit<NewProgram, "runId"> = {
      jobs: decoded.jobs,
      programData,
      jobData,
      ...(decoded.idempotencyKey === undefined ? {} : { idempotencyKey: decoded.idempotencyKey }),
      ...(decoded.startAt === undefined ? {} : { startAt: decoded.startAt }),
      ...(decoded.startAfter === undefined ? {} : { startAfter: Duration.decode(decoded.startAfter) })
    }
    return valid
  })

/** Plain creation (no key, no delay) takes the single-row insert, a prepared statement on the SQL repository. */
const isPlain = (valid: Omit<NewProgram, "runId">) =>
  valid.idempotencyKey === undefined && valid.startAt === undefined && valid.startAfter === undefined

const validateQuery = (query: ListQuery) => {
  const { limit = defaultListLimit, offset = 0, stepRetryCountGte = 0 } = query
  const bad = [["limit", limit, 1], ["offset", offset, 0], ["stepRetryCountGte", stepRetryCountGte, 0]] as const
  for (const [name, value, min] of bad) {
    if (!Number.isInteger(value) || value < min) {
      return Effect.fail(invalid(`invalid list query: ${name} must be an integer >= ${min}`))
    }
  }
  if (query.after !== undefined && (!Number.isInteger(query.after) || query.after < 0)) {
    return Effect.fail(invalid("invalid list query: after must be an integer >= 0 (the last id of the previous page)"))
  }
  const problem = filterProblem(query)
  if (problem !== undefined) return Effect.fail(invalid(`invalid list query: ${problem}`))
  return Effect.succeed({ ...query, limit, offset, stepRetryCountGte })
}

const validateFilter = (filter: ProgramFilter) => {
  if (typeof filter !== "object" || filter === null) return Effect.fail(invalid("invalid filter: must be an object"))
  const problem = filterProblem(filter)
  return problem === undefined ? Effect.void : Effect.fail(invalid(`invalid filter: ${problem}`))
}

const validatePrune = (options: PruneOptions) => {
  for (const name of ["finishedBefore", "erroredBefore"] as const) {
    const date = options[name]
    if (date !== undefined && !(date instanceof Date && !Number.isNaN(date.getTime()))) {
      return Effect.fail(invalid(`invalid prune: ${name} must be a valid Date`))
    }
  }
  const batchSize = options.batchSize ?? defaultBatchSize
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    return Effect.fail(invalid("invalid prune: batchSize must be an integer >= 1"))
  }
  return Effect.succeed(batchSize)
}

/** Rows per statement of `cancelMany` and `resumeMany`. */
const bulkBatchSize = 500

/** Wake-ups published at once by a batch (confirms are pipelined: one round trip covers many). */
const publishConcurrency = 64

const publishRetry = Schedule.exponential("50 millis").pipe(Schedule.intersect(Schedule.recurs(4)))

/**
 * The longest `createProgram` waits for its program's first wake-up: one attempt, no retries. The row is committed by
 * then and the sweeper publishes what this misses (invariant 0), so a broker that is down must not hold the caller:
 * retried, and with the AMQP adapter's own 10 s `publishTimeout` per try, it used to take about 50 s.
 */
export const createPublishTimeout: Duration.Duration = Duration.seconds(2)

const makeWith = (
  options: ProgramExecutorOptions = {}
): Effect.Effect<ProgramExecutorService, never, ProgramRepository | ProgramQueue> =>
  Effect.gen(function*() {
    const maxProgramBytes = options.maxProgramBytes ?? defaultMaxProgramBytes
    const repository = yield* ProgramRepository
    const queue = yield* ProgramQueue
    const events = yield* ProgramEvents

    const wake = (runId: string, step: number) =>
      retryOnFailure(queue.publish({ runId, step }), publishRetry).pipe(
        Effect.catchAll((error) =>
          Effect.logError(`program stored but its wake-up could not be published; the sweeper will: ${error.message}`)
            .pipe(Effect.annotateLogs({ runId, step }))
        )
      )

    // Interruptible, so that the bound holds even where the caller is not (after a commit, see `afterCommit`).
    const wakeCreated = (runId: string) =>
      Effect.interruptible(queue.publish({ runId, step: 0 })).pipe(
        Effect.timeoutFail({
          duration: createPublishTimeout,
          onTimeout: () =>
            new QueueError({ message: `not confirmed within ${Duration.format(createPublishTimeout)}` })
        }),
        Effect.catchAll((error) =>
          Effect.logError(`program stored but its wake-up could not be published; the sweeper will: ${error.message}`)
            .pipe(Effect.annotateLogs({ runId, step: 0 }))
        )
      )

    /**
     * The first steps of programs just stored, each delayed until its `next_run_at` (database clock). On the first
     * failure the rest are left to the sweeper, so a broker that is down holds the caller for one bounded attempt.
     */
    const wakeAllCreated = (programs: ReadonlyArray<ProgramRecord>) =>
      Effect.forEach(programs, (program) => {
        const delay = program.nextRunAt.getTime() - program.createdAt.getTime()
        return queue.publish({ runId: program.runId, step: 0 }, delay > 0 ? { delay: Duration.millis(delay) } : {})
      }, { concurrency: publishConcurrency, discard: true }).pipe(
        Effect.interruptible,
        Effect.timeoutFail({
          duration: createPublishTimeout,
          onTimeout: () => new QueueError({ message: `not confirmed within ${Duration.format(createPublishTimeout)}` })
        }),
        Effect.catchAll((error) =>
          Effect.logError(`programs stored but their wake-ups could not all be published; the sweeper will: ${error.message}`)
            .pipe(Effect.annotateLogs({ programs: programs.length }))
        )
      )

    /** Stores validated programs (idempotency keys, delayed starts, many rows) and wakes those it created. */
    const storeMany = (valid: ReadonlyArray<Omit<NewProgram, "runId">>) =>
      Effect.gen(function*() {
        const inserted = yield* repository.insertMany(valid.map((program) => ({ runId: randomUUID(), ...program })))
        const created = inserted.filter((entry) => entry.created).map((entry) => entry.program)
        yield* Metric.incrementBy(metrics.programsCreated, created.length)
        yield* Effect.forEach(
          created,
          (program) => events.publish(ProgramEvent.ProgramCreated({ runId: program.runId, jobs: program.jobs })),
          { discard: true }
        )
        if (created.length > 0) {
          const deferred = repository.afterCommit === undefined
            ? false
            : yield* repository.afterCommit(wakeAllCreated(created))
          if (!deferred) yield* wakeAllCreated(created)
        }
        return inserted.map((entry) => entry.program.runId)
      })

    /** Runs `batch` from the lowest id up until a batch comes back short; each batch is one guarded statement. */
    const inBatches = (
      batch: (page: { readonly afterId: number; readonly limit: number }) => Effect.Effect<
        ReadonlyArray<{ readonly id: number; readonly runId: string; readonly step: number }>,
        RepositoryError
      >,
      then: (
        changed: ReadonlyArray<{ readonly id: number; readonly runId: string; readonly step: number }>
      ) => Effect.Effect<void>
    ) =>
      Effect.gen(function*() {
        let afterId = 0
        let total = 0
        while (true) {
          const changed = yield* batch({ afterId, limit: bulkBatchSize })
          total += changed.length
          yield* then(changed)
          if (changed.length < bulkBatchSize) return total
          afterId = changed.reduce((max, program) => Math.max(max, program.id), afterId)
        }
      })

    return {
      createPrograms: (inputs) =>
        Effect.gen(function*() {
          if (!Array.isArray(inputs)) return yield* invalid("invalid programs: createPrograms takes an array")
          const valid: Array<Omit<NewProgram, "runId">> = []
          for (let index = 0; index < inputs.length; index++) {
            valid.push(
              yield* Effect.mapError(
                validate(inputs[index], maxProgramBytes),
                (error) => invalid(`inputs[${index}]: ${error.message}`)
              )
            )
          }
          if (valid.length === 0) return []
          return yield* storeMany(valid)
        }).pipe(withSpanIfTraced("program-executor.createPrograms")),

      cancelMany: (filter, reason = "cancelled") =>
        Effect.zipRight(
          validateFilter(filter),
          inBatches(
            (page) => repository.cancelBatch(filter, reason, page),
            (changed) =>
              Effect.zipRight(
                Metric.incrementBy(metrics.programsCancelled, changed.length),
                Effect.forEach(
                  changed,
                  (program) => events.publish(ProgramEvent.ProgramCancelled({ runId: program.runId, reason })),
                  { discard: true }
                )
              )
          )
        ),

      resumeMany: (filter) =>
        Effect.zipRight(
          validateFilter(filter),
          inBatches(
            (page) => repository.resumeBatch(filter, page),
            (changed) =>
              Effect.forEach(
                changed,
                (program) =>
                  Effect.zipRight(
                    events.publish(ProgramEvent.ProgramResumed({ runId: program.runId, step: program.step })),
                    wake(program.runId, program.step)
                  ),
                { concurrency: publishConcurrency, discard: true }
              )
          )
        ),

      prune: (options) =>
        Effect.gen(function*() {
          const batchSize = yield* validatePrune(options)
          const dryRun = options.dryRun === true
          const run = (kind: "finished" | "errored", before: Date | undefined) =>
            before === undefined
              ? Effect.succeed(0)
              : dryRun
              ? repository.countPrunable(kind, before)
              : Effect.gen(function*() {
                let total = 0
                while (true) {
                  const deleted = yield* repository.pruneBatch(kind, before, batchSize)
                  total += deleted
                  if (deleted < batchSize) return total
                }
              })
          const finished = yield* run("finished", options.finishedBefore)
          const errored = yield* run("errored", options.erroredBefore)
          if (!dryRun && finished + errored > 0) yield* Effect.logInfo(`pruned ${finished} finished, ${errored} errored`)
          return { finished, errored, dryRun }
        }),

      createProgram: (input) =>
        Effect.gen(function*() {
          const valid = yield* validate(input, maxProgramBytes)
          if (!isPlain(valid)) return (yield* storeMany([valid]))[0]!
          const runId = randomUUID()
          yield* repository.insert({ runId, jobs: valid.jobs, programData: valid.programData, jobData: valid.jobData })
          yield* Metric.increment(metrics.programsCreated)
          yield* events.publish(ProgramEvent.ProgramCreated({ runId, jobs: valid.jobs }))
          // Inside the caller's transaction the row is not visible to workers before the commit, and a wake-up sent
          // earlier would be refused by their claim, leaving the program to the sweeper: it goes out after the commit.
          const deferred = repository.afterCommit === undefined ? false : yield* repository.afterCommit(wakeCreated(runId))
          if (!deferred) yield* wakeCreated(runId)
          return runId
        }).pipe(withSpanIfTraced("program-executor.createProgram")),

      get: repository.get,

      list: (query = {}) => Effect.flatMap(validateQuery(query), repository.list),

      cancel: (runId, reason = "cancelled") =>
        repository.cancel(runId, reason).pipe(
          Effect.tap(() =>
            Effect.zipRight(
              Metric.increment(metrics.programsCancelled),
              events.publish(ProgramEvent.ProgramCancelled({ runId, reason }))
            )
          )
        ),

      resume: (runId) =>
        repository.resume(runId).pipe(
          Effect.tap((program) =>
            Effect.zipRight(
              events.publish(ProgramEvent.ProgramResumed({ runId, step: program.step })),
              wake(runId, program.step)
            )
          )
        )
    }
  })

const make = makeWith()

export class ProgramExecutor extends Context.Tag("@program-executor/core/ProgramExecutor")<
  ProgramExecutor,
  ProgramExecutorService
>() {
  /** Needs a `ProgramRepository` and a `ProgramQueue` (SQL, RabbitMQ or in memory). */
  static readonly layer: Layer.Layer<ProgramExecutor, never, ProgramRepository | ProgramQueue> = Layer.effect(
    this,
    make
  )
  static readonly make = make
  /** With options (`maxProgramBytes`). */
  static readonly layerWith = (
    options: ProgramExecutorOptions
  ): Layer.Layer<ProgramExecutor, never, ProgramRepository | ProgramQueue> => Layer.effect(this, makeWith(options))
  static readonly makeWith = makeWith
  /** The largest program `createProgram` stores unless `maxProgramBytes` says otherwise: 1 MiB. */
  static readonly defaultMaxProgramBytes = defaultMaxProgramBytes
  /** The longest `createProgram` waits for its wake-up's publish (one attempt); the sweeper publishes what it misses. */
  static readonly createPublishTimeout = createPublishTimeout
  static readonly createProgram = (input: CreateProgramInput) =>
    Effect.flatMap(ProgramExecutor, (executor) => executor.createProgram(input))
  static readonly get = (runId: string) => Effect.flatMap(ProgramExecutor, (executor) => executor.get(runId))
  static readonly list = (query?: ListQuery) => Effect.flatMap(ProgramExecutor, (executor) => executor.list(query))
  static readonly cancel = (runId: string, reason?: string) =>
    Effect.flatMap(ProgramExecutor, (executor) => executor.cancel(runId, reason))
  static readonly resume = (runId: string) => Effect.flatMap(ProgramExecutor, (executor) => executor.resume(runId))
  static readonly createPrograms = (inputs: ReadonlyArray<CreateProgramInput>) =>
    Effect.flatMap(ProgramExecutor, (executor) => executor.createPrograms(inputs))
  static readonly cancelMany = (filter: ProgramFilter, reason?: string) =>
    Effect.flatMap(ProgramExecutor, (executor) => executor.cancelMany(filter, reason))
  static readonly resumeMany = (filter: ProgramFilter) =>
    Effect.flatMap(ProgramExecutor, (executor) => executor.resumeMany(filter))
  static readonly prune = (options: PruneOptions) => Effect.flatMap(ProgramExecutor, (executor) => executor.prune(options))
}
