/**
 * A job is a named `Effect`: one step of a program. It reads its context from `JobContext` and fails through the
 * typed channel (`RetryableError | IgnorableError | FatalError`, or `checkpoint`'s `ExecutionTimeExceededError`).
 */
import * as Cause from "effect/Cause"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as ParseResult from "effect/ParseResult"
import * as Ref from "effect/Ref"
import * as Runtime from "effect/Runtime"
import type * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import { toJobError } from "./internal/classify.js"
import type { JobContextShape } from "./JobContext.js"
import { JobContext } from "./JobContext.js"
import type { JobError } from "./JobError.js"
import { FatalError } from "./JobError.js"

export interface JobOptions {
  /** Attempts before a retryable failure becomes fatal; `Infinity` for no limit. Overrides the executor's. */
  readonly maxAttempts?: number
  /** Delay before each retry (its n-th delay is used for the n-th retry). Overrides the executor's. */
  readonly retrySchedule?: Schedule.Schedule<unknown, unknown>
  /** A run taking longer fails as retryable. Overrides the executor's `jobTimeout`. */
  readonly timeout?: Duration.DurationInput
}

export interface Job<R = never> {
  readonly name: string
  readonly run: Effect.Effect<unknown, JobError, JobContext | R>
  readonly options: JobOptions
}

/** The services a job needs besides its `JobContext`. */
export type Context<J> = J extends Job<infer R> ? R : never

export interface Schemas<P, PI, D, DI> {
  readonly programData?: Schema.Schema<P, PI>
  readonly jobData?: Schema.Schema<D, DI>
}

type AnyRecord = Record<string, any>

/**
 * `Job.make(name, effect)`: the effect reads `JobContext` itself.
 *
 * `Job.make(name, { programData, jobData }, (ctx) => effect)`: program data and job data are decoded with the
 * schemas (a program whose data does not decode fails fatally, naming the job) and job data writes are encoded.
 */
export const make: {
  <E extends JobError, R>(name: string, effect: Effect.Effect<unknown, E, R>, options?: JobOptions): Job<
    Exclude<R, JobContext>
  >
  <E extends JobError, R, P = AnyRecord, PI = AnyRecord, D = AnyRecord, DI = AnyRecord>(
    name: string,
    schemas: Schemas<P, PI, D, DI>,
    f: (ctx: JobContextShape<P, D>) => Effect.Effect<unknown, E, R>,
    options?: JobOptions
  ): Job<Exclude<R, JobContext>>
} = (
  name: string,
  effectOrSchemas: Effect.Effect<unknown, JobError, any> | Schemas<any, any, any, any>,
  fOrOptions?: ((ctx: JobContextShape<any, any>) => Effect.Effect<unknown, JobError, any>) | JobOptions,
  options?: JobOptions
): Job<any> =>
  Effect.isEffect(effectOrSchemas)
    ? { name, run: effectOrSchemas, options: (fOrOptions as JobOptions | undefined) ?? {} }
    : {
      name,
      run: Effect.flatMap(JobContext, (ctx) =>
        Effect.flatMap(
          typedContext(name, ctx, effectOrSchemas),
          fOrOptions as (ctx: JobContextShape<any, any>) => Effect.Effect<unknown, JobError, any>
        )),
      options: options ?? {}
    }

const typedContext = <P, PI, D, DI>(
  name: string,
  ctx: JobContextShape,
  schemas: Schemas<P, PI, D, DI>
): Effect.Effect<JobContextShape<P, D>, FatalError> =>
  Effect.gen(function*() {
    const undecodable = (what: string) => (error: ParseResult.ParseError) =>
      new FatalError({
        message: `${what} of job "${name}" does not match its schema: ${ParseResult.TreeFormatter.formatErrorSync(error)}`
      })
    const programData = schemas.programData === undefined
      ? ctx.programData as P
      : yield* Schema.decodeUnknown(schemas.programData)(ctx.programData).pipe(
        Effect.mapError(undecodable("programData"))
      )
    const jobDataSchema = schemas.jobData
    if (jobDataSchema === undefined) return { ...ctx, programData } as unknown as JobContextShape<P, D>

    const encode = (value: D) =>
      Schema.encode(jobDataSchema)(value).pipe(
        Effect.orDieWith((error) => new Error(`jobData of job "${name}" cannot be encoded: ${error.message}`))
      )
    const current = yield* Ref.make(
      yield* Effect.flatMap(ctx.jobData.get, Schema.decodeUnknown(jobDataSchema)).pipe(
        Effect.mapError(undecodable("jobData"))
      )
    )
    // One write at a time, the read of a merge included: two concurrent merges must not both start from the same value.
    const lock = yield* Effect.makeSemaphore(1)
    const write = (value: D) =>
      Effect.flatMap(encode(value), (encoded) => ctx.jobData.set(encoded as AnyRecord)).pipe(
        Effect.zipRight(Ref.set(current, value))
      )
    const set = (value: D) => lock.withPermits(1)(write(value))
    const merge = (partial: Partial<D>) =>
      lock.withPermits(1)(Effect.flatMap(Ref.get(current), (value) => write({ ...value, ...partial })))
    return {
      ...ctx,
      programData,
      jobData: { get: Ref.get(current), set, merge },
      checkpoint: (partial, checkpointOptions) =>
        Effect.zipRight(merge(partial), ctx.checkpoint({}, checkpointOptions))
    }
  })

/** The context given to a Promise job: the same as `JobContext`, with Promises, plus the run's `AbortSignal`. */
export interface PromiseJobContext {
  readonly runId: string
  readonly step: number
  readonly jobName: string
  readonly jobs: ReadonlyArray<string>
  readonly attempt: number
  readonly programData: AnyRecord
  readonly jobData: {
    readonly get: () => Promise<AnyRecord>
    readonly set: (value: AnyRecord) => Promise<void>
    readonly merge: (partial: AnyRecord) => Promise<void>
  }
  readonly checkpoint: (partial: AnyRecord, options: { readonly maxExecutionTime: Duration.DurationInput }) => Promise<void>
  /** Aborted when the run is interrupted (cancellation, shutdown, timeout). */
  readonly signal: AbortSignal
}

/**
 * Plain async code as a job. A rejection is classified like any failure: our error classes keep their meaning, a
 * value with `retryable: true` / `ignorable: true` is retryable / ignorable, anything else is fatal.
 */
export const fromPromise = (
  name: string,
  f: (ctx: PromiseJobContext) => Promise<unknown>,
  options?: JobOptions
): Job =>
  make(
    name,
    Effect.gen(function*() {
      const ctx = yield* JobContext
      const runtime = yield* Effect.runtime<never>()
      // Rejects with the failure itself (not a FiberFailure), so job code can catch and inspect it.
      const toPromise = <A, E>(effect: Effect.Effect<A, E>): Promise<A> =>
        Runtime.runPromiseExit(runtime, effect).then((exit) =>
          Exit.isSuccess(exit) ? exit.value : Promise.reject(Cause.squash(exit.cause))
        )
      return yield* Effect.tryPromise({
        try: (signal) =>
          f({
            runId: ctx.runId,
            step: ctx.step,
            jobName: ctx.jobName,
            jobs: ctx.jobs,
            attempt: ctx.attempt,
            programData: ctx.programData,
            jobData: {
              get: () => toPromise(ctx.jobData.get),
              set: (value) => toPromise(ctx.jobData.set(value)),
              merge: (partial) => toPromise(ctx.jobData.merge(partial))
            },
            checkpoint: (partial, checkpointOptions) => toPromise(ctx.checkpoint(partial, checkpointOptions)),
            signal
          }),
        catch: toJobError
      })
    }),
    options
  )

/** The old library's `jobDataHandler`. */
export interface SeedJobDataHandler {
  get(): Promise<AnyRecord>
  set(value: AnyRecord): Promise<void>
  merge(partial: AnyRecord): Promise<void>
  checkpoint(partial: AnyRecord, maxExecutionTimeMs: number): Promise<void>
}

/** The old library's queue message, as its jobs' `execute` received it: `jobs[0]` is the current job. */
export interface SeedMessage {
  readonly jobs: ReadonlyArray<string>
  readonly programData: AnyRecord
  readonly runId: string
}

/** A class-style job of the old library: `static create(programData)` and `execute(message, jobDataHandler)`. */
export interface SeedJobClass {
  readonly name: string
  create(programData: AnyRecord): { execute(message: SeedMessage, jobDataHandler: SeedJobDataHandler): unknown }
}

/** Runs an old library job class unchanged. Its name is the class's `name` unless `options.name` is given. */
export const fromClass = (jobClass: SeedJobClass, options?: JobOptions & { readonly name?: string }): Job =>
  fromPromise(options?.name ?? jobClass.name, async (ctx) => {
    const instance = await jobClass.create(ctx.programData)
    await instance.execute(
      { jobs: ctx.jobs.slice(ctx.step), programData: ctx.programData, runId: ctx.runId },
      {
        get: ctx.jobData.get,
        set: ctx.jobData.set,
        merge: ctx.jobData.merge,
        checkpoint: (partial, maxExecutionTimeMs) => ctx.checkpoint(partial, { maxExecutionTime: maxExecutionTimeMs })
      }
    )
  }, options)
