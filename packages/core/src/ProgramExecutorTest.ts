/**
 * Testing programs and jobs without a database or broker: everything in memory, time driven by `TestClock`.
 *
 * ```ts
 * it.effect("retries then succeeds", () =>
 *   Effect.gen(function*() {
 *     const runId = yield* ProgramExecutor.createProgram({ jobs: ["flaky"] })
 *     yield* ProgramExecutorTest.runUntilIdle()
 *     const program = yield* ProgramExecutor.get(runId)
 *   }).pipe(Effect.provide(ProgramExecutorTest.layer({ jobs: [flaky] }))))
 * ```
 */
import * as Chunk from "effect/Chunk"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import type * as ConfigError from "effect/ConfigError"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as TestClock from "effect/TestClock"
import * as Executor from "./Executor.js"
import * as ExecutorConfig from "./ExecutorConfig.js"
import type * as Job from "./Job.js"
import { JobLibrary, type JobLibraryError } from "./JobLibrary.js"
import type { CreateProgramInput, InvalidProgramError, ProgramRecord } from "./Program.js"
import { ProgramEvents } from "./ProgramEvents.js"
import { ProgramExecutor } from "./ProgramExecutor.js"
import { ProgramQueue } from "./ProgramQueue.js"
import { ProgramRepository, type RepositoryError } from "./ProgramRepository.js"

export class ProgramsStuckError extends Schema.TaggedError<ProgramsStuckError>()("ProgramsStuckError", {
  message: Schema.String,
  runIds: Schema.Array(Schema.String)
}) {}

export interface TestLayerOptions<Jobs extends ReadonlyArray<Job.Job<any>>, E = never> {
  readonly jobs: Jobs
  /** Where programs and wake-ups live; in memory unless given (our adapters' tests pass SQL or RabbitMQ here). */
  readonly storage?: Layer.Layer<ProgramRepository | ProgramQueue, E>
  readonly config?: Partial<ExecutorConfig.ExecutorOptions>
  /** Workers running in the background (default 1); 0 to start none and drive `Executor.run` yourself. */
  readonly workers?: number
}

/** In-memory repository, queue and events, the `ProgramExecutor` API, and workers running in the layer's scope. */
/** What the test layer provides; jobs may use any of it (a job that starts a child program uses `ProgramExecutor`). */
export type Provided = ProgramExecutor | ProgramRepository | ProgramQueue | ProgramEvents | JobLibrary

export const layer = <const Jobs extends ReadonlyArray<Job.Job<any>>, E = never>(
  options: TestLayerOptions<Jobs, E>
): Layer.Layer<
  Provided,
  JobLibraryError | ConfigError.ConfigError | E,
  Exclude<Job.Context<Jobs[number]>, Provided>
> => {
  const storage = Layer.mergeAll(
    options.storage ?? Layer.merge(ProgramRepository.layerMemory, ProgramQueue.layerMemory),
    ProgramEvents.layer(),
    // No shutdown grace by default: the test clock would never let it elapse when the layer closes on a running job.
    ExecutorConfig.layer({ shutdownGrace: Duration.zero, ...options.config })
  )
  const services = JobLibrary.layer(...options.jobs).pipe(
    Layer.provideMerge(ProgramExecutor.layer),
    Layer.provideMerge(storage)
  )
  const workers = Layer.scopedDiscard(
    Effect.gen(function*() {
      const config = yield* ExecutorConfig.ExecutorConfig
      for (let index = 0; index < (options.workers ?? 1); index++) {
        yield* Effect.forkScoped(
          Effect.provideService(Executor.run, ExecutorConfig.ExecutorConfig, {
            ...config,
            workerId: `${config.workerId}-${index}`
          })
        )
      }
    })
  )
  // TypeScript cannot see through `Exclude` of a generic context; the layer needs exactly what the cast says.
  return workers.pipe(Layer.provideMerge(services)) as unknown as Layer.Layer<
    Provided,
    JobLibraryError | ConfigError.ConfigError | E,
    Exclude<Job.Context<Jobs[number]>, Provided>
  >
}

/**
 * Lets the workers run until no program is in progress, moving `TestClock` forward to the next timer whenever
 * nothing else can happen (a delayed retry, a lease expiry, a heartbeat). Returns every program. Jobs should not
 * wait on real I/O here. Fails with `ProgramsStuckError` if programs are still in progress after `maxRounds`.
 */
export const runUntilIdle = (
  options?: { readonly maxRounds?: number }
): Effect.Effect<ReadonlyArray<ProgramRecord>, ProgramsStuckError | RepositoryError, ProgramRepository> =>
  Effect.gen(function*() {
    const repository = yield* ProgramRepository
    const maxRounds = options?.maxRounds ?? 10_000
    for (let round = 0; round < maxRounds; round++) {
      yield* Effect.repeatN(Effect.yieldNow(), 50)
      const inProgress = yield* repository.list({ inProgressOnly: true, limit: 1 })
      if (inProgress.length === 0) return yield* repository.list({ order: "asc", limit: Number.MAX_SAFE_INTEGER })
      const sleeps = yield* TestClock.sleeps()
      if (Chunk.isNonEmpty(sleeps)) {
        const now = yield* Clock.currentTimeMillis
        yield* TestClock.adjust(Math.max(1, Math.min(...sleeps) - now))
      }
    }
    const stuck = yield* repository.list({ inProgressOnly: true, limit: 20 })
    return yield* new ProgramsStuckError({
      message: `${stuck.length} program(s) still in progress after ${maxRounds} rounds`,
      runIds: stuck.map((program) => program.runId)
    })
  })

/**
 * Runs one program to its end on a fresh in-memory layer under `TestClock` and returns its row: the shortest way
 * to test a job's behaviour (retries, failures, job data).
 */
export const runProgram = <const Jobs extends ReadonlyArray<Job.Job<any>>>(
  input: CreateProgramInput,
  options: TestLayerOptions<Jobs>
): Effect.Effect<
  ProgramRecord,
  ProgramsStuckError | RepositoryError | InvalidProgramError | JobLibraryError | ConfigError.ConfigError,
  Exclude<Job.Context<Jobs[number]>, Provided>
> =>
  Effect.gen(function*() {
    const runId = yield* ProgramExecutor.createProgram(input)
    const programs = yield* runUntilIdle()
    return programs.find((program) => program.runId === runId)!
  }).pipe(Effect.provide(layer(options)))
