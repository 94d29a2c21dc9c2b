/**
 * The executor's end-to-end suite: the execution invariants of DESIGN.md, proven on any storage (a repository and a
 * queue). Runs on the live clock with short durations, so it works where time is a database's clock; waits are on
 * outcomes, polled with a bound. Each test gets its own namespace (table / queue names) from `makeLayer`.
 */
import { describe, expect, it } from "@effect/vitest"
import type { ProgramRecord } from "@program-executor/core"
import {
  Executor,
  ExecutorConfig,
  FatalError,
  IgnorableError,
  InvalidProgramError,
  Job,
  JobContext,
  JobLibrary,
  ProgramEvents,
  ProgramExecutor,
  ProgramQueue,
  ProgramRepository,
  RepositoryError,
  RetryableError
} from "@program-executor/core"
import { Context, Deferred, Duration, Effect, Exit, Fiber, Layer, Logger, Metric, Option, Ref, Schedule, Schema, Scope, Stream } from "effect"

/** Short everything, so faults resolve in well under a second. */
export const fastConfig: Partial<ExecutorConfig.ExecutorOptions> = {
  concurrency: 8,
  leaseDuration: Duration.seconds(2),
  heartbeatInterval: Duration.millis(100),
  retrySchedule: Schedule.spaced("10 millis"),
  maxAttempts: 5,
  sweepInterval: Duration.millis(200),
  recoveryInterval: Duration.millis(200),
  staleAfter: Duration.millis(500),
  shutdownGrace: Duration.seconds(5),
  storageRetry: Schedule.spaced("50 millis").pipe(Schedule.upTo("20 seconds"))
}

export interface Execution {
  readonly runId: string
  readonly job: string
  readonly step: number
  readonly attempt: number
}

/** A job that records each run, then does `body`. */
export const recorded = <E extends Job.Job["run"] extends Effect.Effect<any, infer X, any> ? X : never>(
  log: Ref.Ref<ReadonlyArray<Execution>>,
  name: string,
  body: (ctx: JobContext["Type"]) => Effect.Effect<unknown, E> = () => Effect.void
) =>
  Job.make(
    name,
    Effect.gen(function*() {
      const ctx = yield* JobContext
      yield* Ref.update(log, (runs) => [...runs, { runId: ctx.runId, job: name, step: ctx.step, attempt: ctx.attempt }])
      return yield* body(ctx)
    })
  )

/** Polls until `done` holds for the program, at most `within`. */
export const awaitProgram = (
  runId: string,
  done: (program: ProgramRecord) => boolean = (program) => program.finishedAt !== null || program.erroredAt !== null,
  within: Duration.DurationInput = "30 seconds"
) =>
  Effect.flatMap(ProgramRepository, (repository) =>
    pollUntil(
      repository.get(runId).pipe(Effect.map(Option.getOrThrowWith(() => new Error(`program ${runId} not found`)))),
      done
    ).pipe(
      Effect.timeoutFail({
        duration: within,
        onTimeout: () => new Error(`program ${runId} did not reach the expected state within ${Duration.format(within)}`)
      })
    ))

/** Runs `effect` every 20 ms until its result satisfies `done`. Bound it with a timeout. */
export const pollUntil = <A, E, R>(effect: Effect.Effect<A, E, R>, done: (value: A) => boolean): Effect.Effect<A, E, R> => {
  const loop: Effect.Effect<A, E, R> = Effect.flatMap(effect, (value) =>
    done(value) ? Effect.succeed(value) : Effect.zipRight(Effect.sleep("20 millis"), Effect.suspend(() => loop)))
  return loop
}

export const awaitAll = (runIds: ReadonlyArray<string>, within?: Duration.DurationInput) =>
  Effect.forEach(runIds, (runId) => awaitProgram(runId, undefined, within), { concurrency: 16 })

type Storage = ProgramRepository | ProgramQueue

/**
 * Storage built once per test; workers started and stopped on it at will (a worker's scope is its lifetime).
 * Provides the `ProgramExecutor` API, the storage and an events hub to the body.
 */
const harness = <A, E>(
  storage: Layer.Layer<Storage, unknown>,
  jobs: ReadonlyArray<Job.Job>,
  body: (workers: {
    /** Starts a worker; `library`: the jobs it knows, when not all of them. */
    readonly start: (
      config?: Partial<ExecutorConfig.ExecutorOptions>,
      library?: ReadonlyArray<Job.Job>
    ) => Effect.Effect<Scope.CloseableScope>
  }) => Effect.Effect<A, E, Storage | ProgramExecutor | ProgramEvents>,
  config?: Partial<ExecutorConfig.ExecutorOptions>,
  decorate: (repository: ProgramRepository["Type"]) => ProgramRepository["Type"] = (repository) => repository
) =>
  Effect.gen(function*() {
    const decorated = Layer.map(
      storage,
      (context) => Context.add(context, ProgramRepository, decorate(Context.get(context, ProgramRepository)))
    )
    const context = yield* Layer.build(
      Layer.mergeAll(decorated, ProgramEvents.layer(), JobLibrary.layer(...jobs)).pipe(Layer.orDie)
    )
    let workerCount = 0
    const testScope = yield* Effect.scope
    const start = (overrides: Partial<ExecutorConfig.ExecutorOptions> = {}, library?: ReadonlyArray<Job.Job>) =>
      Effect.gen(function*() {
        const scope = yield* Scope.make()
        // Workers stop before the storage closes under them (finalizers run in reverse order).
        yield* Scope.addFinalizer(testScope, Scope.close(scope, Exit.void))
        const options: ExecutorConfig.ExecutorOptions = {
          ...ExecutorConfig.defaults(),
          ...fastConfig,
          ...config,
          ...overrides,
          workerId: `worker-${workerCount++}`
        }
        const own = library === undefined
          ? context
          : Context.merge(context, yield* Layer.build(JobLibrary.layer(...library)).pipe(Scope.extend(scope), Effect.orDie))
        yield* Effect.forkIn(
          Executor.run.pipe(Effect.provide(own), Effect.provideService(ExecutorConfig.ExecutorConfig, options)),
          scope
        )
        return scope
      })
    const executor = yield* Effect.provide(ProgramExecutor.make, context)
    return yield* body({ start }).pipe(
      Effect.provide(context),
      Effect.provideService(ProgramExecutor, executor)
    )
  })

export interface ExecutorConformanceOptions {
  /**
   * The queue claims while it dequeues and publishing carries no message (the SQL queue): wake-ups published by
   * hand never reach the executor, so the tests of malformed wake-ups do not apply.
   */
  readonly claimsWhileDequeuing?: boolean
}

export const executorConformance = (
  name: string,
  makeLayer: (namespace: string) => Layer.Layer<Storage, unknown>,
  options: ExecutorConformanceOptions = {}
) =>
  describe(`executor on ${name}`, () => {
    let counter = 0
    const namespace = () => `pe_${Date.now().toString(36)}_${counter++}_${Math.random().toString(36).slice(2, 6)}`
    const run = <A, E>(
      jobs: ReadonlyArray<Job.Job>,
      body: Parameters<typeof harness<A, E>>[2],
      config?: Partial<ExecutorConfig.ExecutorOptions>,
      decorate?: (repository: ProgramRepository["Type"]) => ProgramRepository["Type"]
    ) => harness(makeLayer(namespace()), jobs, body, config, decorate)

    it.scopedLive("runs the jobs of a program in order, each once, and keeps `step` at the last job", () =>
      Effect.gen(function*() {
        const log = yield* Ref.make<ReadonlyArray<Execution>>([])
        const jobs = ["a", "b", "c"].map((job) => recorded(log, job))
        yield* run(jobs, (workers) =>
          Effect.gen(function*() {
            yield* workers.start()
            const runIds = yield* Effect.forEach(
              [1, 2, 3],
              () => ProgramExecutor.createProgram({ jobs: ["a", "b", "c"], programData: { shop: 1 } })
            )
            const programs = yield* awaitAll(runIds)
            for (const program of programs) {
              expect(program.finishedAt).not.toBeNull()
              expect(program.erroredAt).toBeNull()
              expect(program.step).toBe(2)
              expect(program.lockedBy).toBeNull()
              const runs = (yield* Ref.get(log)).filter((execution) => execution.runId === program.runId)
              expect(runs.map((execution) => execution.job)).toEqual(["a", "b", "c"])
              expect(runs.map((execution) => execution.step)).toEqual([0, 1, 2])
            }
          }))
      }))

    it.scopedLive("runs programs concurrently, up to the concurrency and never more", () =>
      Effect.gen(function*() {
        const concurrency = 4
        const active = yield* Ref.make(0)
        const peak = yield* Ref.make(0)
        const release = yield* Deferred.make<void>()
        const gated = Job.make(
          "gated",
          Effect.gen(function*() {
            const now = yield* Ref.updateAndGet(active, (n) => n + 1)
            yield* Ref.update(peak, (max) => Math.max(max, now))
            yield* Deferred.await(release)
            yield* Ref.update(active, (n) => n - 1)
          })
        )
        yield* run([gated], (workers) =>
          Effect.gen(function*() {
            yield* workers.start({ concurrency })
            const runIds = yield* Effect.forEach(
              Array.from({ length: 12 }),
              () => ProgramExecutor.createProgram({ jobs: ["gated"] })
            )
            // All slots fill up, really overlapping, before any job may finish.
            yield* pollUntil(Ref.get(active), (n) => n === concurrency).pipe(Effect.timeout("30 seconds"))
            yield* Deferred.succeed(release, undefined)
            yield* awaitAll(runIds)
            expect(yield* Ref.get(peak)).toBe(concurrency)
          }))
      }))

    it.scopedLive("retries a retryable failure and keeps job data across the retry", () =>
      Effect.gen(function*() {
        const log = yield* Ref.make<ReadonlyArray<Execution>>([])
        const flaky = recorded(log, "flaky", (ctx) =>
          Effect.gen(function*() {
            const { pages = [] } = yield* ctx.jobData.get
            yield* ctx.jobData.merge({ pages: [...pages, ctx.attempt] })
            if (ctx.attempt < 3) return yield* new RetryableError({ message: `rate limited (${ctx.attempt})` })
          }))
        yield* run([flaky, recorded(log, "after")], (workers) =>
          Effect.gen(function*() {
            yield* workers.start()
            const runId = yield* ProgramExecutor.createProgram({ jobs: ["flaky", "after"] })
            const program = yield* awaitProgram(runId)
            expect(program.finishedAt).not.toBeNull()
            expect(program.jobData).toEqual({ flaky: { pages: [1, 2, 3] } })
            expect(program.stepRetryCount).toBe(0)
            // As in the old library, error_message keeps the last caught error.
            expect(program.errorMessage).toBe("rate limited (2)")
            expect((yield* Ref.get(log)).map((execution) => `${execution.job}#${execution.attempt}`)).toEqual([
              "flaky#1",
              "flaky#2",
              "flaky#3",
              "after#1"
            ])
          }))
      }))

    it.scopedLive("gives up after the job's maximum attempts: fatal, and the rest never runs", () =>
      Effect.gen(function*() {
        const log = yield* Ref.make<ReadonlyArray<Execution>>([])
        const failing = Job.make(
          "always_failing",
          Effect.fail(new RetryableError({ message: "still down" })),
          { maxAttempts: 3 }
        )
        yield* run([failing, recorded(log, "never")], (workers) =>
          Effect.gen(function*() {
            yield* workers.start()
            const runId = yield* ProgramExecutor.createProgram({ jobs: ["always_failing", "never"] })
            const program = yield* awaitProgram(runId)
            expect(program.erroredAt).not.toBeNull()
            expect(program.step).toBe(0)
            expect(program.stepRetryCount).toBe(2)
            expect(program.errorMessage).toBe("gave up after 3 attempt(s): still down")
            expect(yield* Ref.get(log)).toEqual([])
          }))
      }))

    it.scopedLive("an ignorable failure stops the program quietly, with an ignorable event", () =>
      Effect.gen(function*() {
        const log = yield* Ref.make<ReadonlyArray<Execution>>([])
        const ignorable = Job.make("ignorable", Effect.fail(new IgnorableError({ message: "nothing to do", code: 404 })))
        yield* run([ignorable, recorded(log, "never")], (workers) =>
          Effect.gen(function*() {
            const events = yield* ProgramEvents
            const errored = yield* events.stream.pipe(
              Stream.filter((event) => event._tag === "ProgramErrored"),
              Stream.runHead,
              Effect.fork
            )
            yield* Effect.yieldNow()
            yield* workers.start()
            const runId = yield* ProgramExecutor.createProgram({ jobs: ["ignorable", "never"] })
            const program = yield* awaitProgram(runId)
            expect(program.erroredAt).not.toBeNull()
            expect(program.errorMessage).toBe("nothing to do")
            expect(yield* Ref.get(log)).toEqual([])
            const event = yield* errored.await
            expect(Exit.isSuccess(event) && Option.isSome(event.value) && event.value.value).toMatchObject({
              runId,
              ignorable: true
            })
          }))
      }))

    it.scopedLive("a fatal failure, a defect, a thrown error or a job interrupting itself stop the program where it happened", () =>
      Effect.gen(function*() {
        const log = yield* Ref.make<ReadonlyArray<Execution>>([])
        const jobs = [
          Job.make("fatal", Effect.fail(new FatalError({ message: "bad input" }))),
          Job.make("defect", Effect.die(new Error("boom"))),
          // Runs on the handler's fiber: its own interruption must not pass for a shutdown (which gives the step back).
          Job.make("interrupts", Effect.interrupt),
          Job.fromPromise("throws", async () => {
            throw new TypeError("undefined is not a function")
          }),
          // The old library's convention: any error with `retryable: true` is retried.
          Job.fromPromise("seed_retryable", async (ctx) => {
            if (ctx.attempt === 1) throw Object.assign(new Error("try again"), { retryable: true })
          }),
          recorded(log, "next")
        ]
        yield* run(jobs, (workers) =>
          Effect.gen(function*() {
            yield* workers.start()
            const create = (first: string) => ProgramExecutor.createProgram({ jobs: ["next", first, "next"] })
            const [fatal, defect, interrupts, throws, seed] = yield* Effect.forEach(
              ["fatal", "defect", "interrupts", "throws", "seed_retryable"],
              create
            )
            const programs = yield* awaitAll([fatal!, defect!, interrupts!, throws!, seed!])
            expect(programs.map((program) => [program.step, program.errorMessage, program.erroredAt !== null])).toEqual(
              [
                [1, "bad input", true],
                [1, "boom", true],
                [1, "job was interrupted", true],
                [1, "undefined is not a function", true],
                [2, "try again", false]
              ]
            )
            expect((yield* Ref.get(log)).length).toBe(5 + 1)
          }))
      }))

    it.scopedLive("a checkpoint past its budget is retried without counting an attempt, resuming from its progress", () =>
      Effect.gen(function*() {
        const pagesSeen = yield* Ref.make<ReadonlyArray<number>>([])
        const paging = Job.make(
          "paging",
          Effect.gen(function*() {
            const ctx = yield* JobContext
            const { page = 0 } = yield* ctx.jobData.get
            for (let next = page; next < 6; next++) {
              yield* Ref.update(pagesSeen, (pages) => [...pages, next])
              yield* Effect.sleep("15 millis") // the work of one page
              yield* ctx.checkpoint({ page: next + 1 }, { maxExecutionTime: "40 millis" })
            }
          }),
          { maxAttempts: 1 } // a counted retry would be fatal
        )
        yield* run([paging], (workers) =>
          Effect.gen(function*() {
            yield* workers.start()
            const runId = yield* ProgramExecutor.createProgram({ jobs: ["paging"] })
            const program = yield* awaitProgram(runId)
            expect(program.finishedAt).not.toBeNull()
            expect(program.jobData).toEqual({ paging: { page: 6 } })
            expect(program.errorMessage).toMatch(/^execution time exceeded/)
            // Every page once: each run resumed where the previous one stopped.
            expect(yield* Ref.get(pagesSeen)).toEqual([0, 1, 2, 3, 4, 5])
          }))
      }))

    it.scopedLive("an unknown job fails the program naming it; with onUnknownJob: skip it is skipped", () =>
      Effect.gen(function*() {
        const log = yield* Ref.make<ReadonlyArray<Execution>>([])
        yield* run([recorded(log, "known")], (workers) =>
          Effect.gen(function*() {
            yield* workers.start()
            const runId = yield* ProgramExecutor.createProgram({ jobs: ["known", "mystery", "known"] })
            const program = yield* awaitProgram(runId)
            expect(program.step).toBe(1)
            expect(program.errorMessage).toMatch(/unknown job "mystery"/)
          }))
        yield* run([recorded(log, "known")], (workers) =>
          Effect.gen(function*() {
            yield* workers.start({ onUnknownJob: "skip" })
            const runId = yield* ProgramExecutor.createProgram({ jobs: ["known", "mystery", "known"] })
            const program = yield* awaitProgram(runId)
            expect(program.finishedAt).not.toBeNull()
            expect(program.erroredAt).toBeNull()
          }))
        expect((yield* Ref.get(log)).length).toBe(3)
      }))

    it.scopedLive("duplicate and stale wake-ups never run a step again", () =>
      Effect.gen(function*() {
        const log = yield* Ref.make<ReadonlyArray<Execution>>([])
        const release = yield* Deferred.make<void>()
        const slow = recorded(log, "slow", () => Deferred.await(release))
        yield* run([slow, recorded(log, "quick")], (workers) =>
          Effect.gen(function*() {
            const queue = yield* ProgramQueue
            yield* workers.start()
            const runId = yield* ProgramExecutor.createProgram({ jobs: ["slow", "quick"] })
            yield* pollUntil(Ref.get(log), (runs) => runs.length === 1).pipe(Effect.timeout("20 seconds"))
            // Duplicates of the running step, and a wake-up for a step the program has not reached, each handled
            // (dropped) while the step still runs: only its lease can refuse them.
            const dropped = Metric.counter("program_executor_wakeups_dropped_total", { incremental: true })
            const before = (yield* Metric.value(dropped)).count
            yield* Effect.forEach([0, 0, 0, 1, 1], (step) => queue.publish({ runId, step }), { discard: true })
            if (!options.claimsWhileDequeuing) {
              yield* pollUntil(Metric.value(dropped), (state) => state.count - before >= 5).pipe(
                Effect.timeout("10 seconds")
              )
            }
            yield* Deferred.succeed(release, undefined)
            yield* awaitProgram(runId)
            // Stale: the program is finished.
            yield* Effect.forEach([0, 1], (step) => queue.publish({ runId, step }), { discard: true })
            // A second program finishing proves the worker has processed the wake-ups published before it.
            const later = yield* ProgramExecutor.createProgram({ jobs: ["quick"] })
            yield* awaitProgram(later)
            const runs = (yield* Ref.get(log)).filter((execution) => execution.runId === runId)
            expect(runs.map((execution) => execution.job)).toEqual(["slow", "quick"])
          }))
      }))

    it.scopedLive("after a worker dies holding a step, its lease expires and another worker continues", () =>
      Effect.gen(function*() {
        const log = yield* Ref.make<ReadonlyArray<Execution>>([])
        yield* run([recorded(log, "a"), recorded(log, "b")], (workers) =>
          Effect.gen(function*() {
            const repository = yield* ProgramRepository
            const runId = yield* ProgramExecutor.createProgram({ jobs: ["a", "b"] })
            // A worker claims step 0, then dies: it never heartbeats, advances or acks.
            const claimed = yield* repository.claim({ runId, step: 0 }, {
              owner: "dead-worker",
              leaseFor: Duration.millis(600)
            })
            expect(Option.isSome(claimed)).toBe(true)
            yield* workers.start()
            const program = yield* awaitProgram(runId)
            expect(program.finishedAt).not.toBeNull()
            expect((yield* Ref.get(log)).map((execution) => execution.job)).toEqual(["a", "b"])
          }))
      }))

    it.scopedLive("cancelling a running program interrupts its job at the next heartbeat", () =>
      Effect.gen(function*() {
        const log = yield* Ref.make<ReadonlyArray<Execution>>([])
        const interrupted = yield* Deferred.make<void>()
        const endless = recorded(log, "endless", () => Effect.never.pipe(Effect.onInterrupt(() => Deferred.succeed(interrupted, undefined))))
        yield* run([endless, recorded(log, "never")], (workers) =>
          Effect.gen(function*() {
            yield* workers.start()
            const runId = yield* ProgramExecutor.createProgram({ jobs: ["endless", "never"] })
            yield* awaitProgram(runId, (program) => program.lockedBy !== null)
            yield* ProgramExecutor.cancel(runId, "requested by user")
            yield* Deferred.await(interrupted).pipe(Effect.timeout("10 seconds"))
            const program = yield* awaitProgram(runId, (program) => program.lockedBy === null)
            expect(program.erroredAt).not.toBeNull()
            expect(program.errorMessage).toBe("requested by user")
            expect((yield* Ref.get(log)).map((execution) => execution.job)).toEqual(["endless"])
            const again = yield* Effect.flip(ProgramExecutor.cancel(runId))
            expect(again._tag).toBe("ProgramStateError")
          }))
      }))

    it.scopedLive("resume runs an errored program again from the step where it failed", () =>
      Effect.gen(function*() {
        const log = yield* Ref.make<ReadonlyArray<Execution>>([])
        const broken = yield* Ref.make(true)
        const fragile = recorded(log, "fragile", () =>
          Effect.flatMap(Ref.get(broken), (isBroken) =>
            isBroken ? Effect.fail(new FatalError({ message: "dependency missing" })) : Effect.void))
        yield* run([recorded(log, "first"), fragile], (workers) =>
          Effect.gen(function*() {
            yield* workers.start()
            const runId = yield* ProgramExecutor.createProgram({ jobs: ["first", "fragile"] })
            const failed = yield* awaitProgram(runId)
            expect(failed.erroredAt).not.toBeNull()
            const notErrored = yield* ProgramExecutor.createProgram({ jobs: ["first"] })
            yield* awaitProgram(notErrored)
            expect((yield* Effect.flip(ProgramExecutor.resume(notErrored)))._tag).toBe("ProgramStateError")
            expect((yield* Effect.flip(ProgramExecutor.resume("no-such-run")))._tag).toBe("ProgramNotFoundError")
            yield* Ref.set(broken, false)
            yield* ProgramExecutor.resume(runId)
            const program = yield* awaitProgram(runId)
            expect(program.finishedAt).not.toBeNull()
            expect(program.erroredAt).toBeNull()
            const runs = (yield* Ref.get(log)).filter((execution) => execution.runId === runId)
            expect(runs.map((execution) => execution.job)).toEqual(["first", "fragile", "fragile"])
          }))
      }))

    it.scopedLive("invalid programs are refused with a typed error and nothing is written", () =>
      run([], () =>
        Effect.gen(function*() {
          const inputs: ReadonlyArray<unknown> = [
            { jobs: [] },
            { jobs: "a" },
            { jobs: [1] },
            { jobs: [""] },
            { jobs: ["a"], programData: [] },
            { jobs: ["a"], programData: "x" },
            { jobs: ["a"], jobData: { b: {} } },
            { jobs: ["a"], programData: { n: 1n } },
            null
          ]
          for (const input of inputs) {
            const error = yield* Effect.flip(ProgramExecutor.createProgram(input as any))
            expect(error).toBeInstanceOf(InvalidProgramError)
          }
          expect(yield* ProgramExecutor.list()).toEqual([])
        })))

    it.scopedLive("values JSON would change, job names like flags and oversized programs are refused by path", () =>
      run([], () =>
        Effect.gen(function*() {
          class Money {
            amount = 1
          }
          const cycle: Record<string, unknown> = {}
          cycle.self = cycle
          const cases: ReadonlyArray<readonly [unknown, string]> = [
            [{ jobs: ["a", "--idempotency-key"] }, `jobs[1]: a job name cannot start with "-"`],
            [{ jobs: ["a"], programData: { when: new Date(0) } }, "programData.when: a Date is not JSON; store date.toISOString()"],
            [{ jobs: ["a"], programData: { nested: { gone: undefined } } }, "programData.nested.gone: undefined is not JSON"],
            [{ jobs: ["a"], programData: { list: [1, undefined] } }, "programData.list[1]: undefined is not JSON"],
            [{ jobs: ["a"], programData: { f: () => 1 } }, "programData.f: a function is not JSON"],
            [{ jobs: ["a"], programData: { n: NaN } }, "programData.n: NaN is not JSON"],
            [{ jobs: ["a"], programData: { n: -Infinity } }, "programData.n: -Infinity is not JSON"],
            [{ jobs: ["a"], programData: { m: new Map([["k", 1]]) } }, "programData.m: a Map is not JSON"],
            [{ jobs: ["a"], programData: { price: new Money() } }, "programData.price: a Money instance is not JSON"],
            [{ jobs: ["a"], jobData: { a: { id: 1n } } }, "jobData.a.id: a BigInt is not JSON; store it as a string"],
            [{ jobs: ["a"], programData: cycle }, "programData.self: a cycle"],
            [{ jobs: ["a"], programData: { s: Symbol("s") } }, "programData.s: a symbol is not JSON"],
            [{ jobs: ["a"], programData: { text: "a\u0000b" } }, "programData.text: a string containing NUL"],
            [{ jobs: ["a"], programData: { text: "\ud800" } }, "programData.text: a string with an unpaired UTF-16 surrogate"],
            [
              { jobs: ["a"], programData: { blob: "x".repeat(ProgramExecutor.defaultMaxProgramBytes) } },
              `more than maxProgramBytes (${ProgramExecutor.defaultMaxProgramBytes})`
            ]
          ]
          for (const [input, message] of cases) {
            const error = yield* Effect.flip(ProgramExecutor.createProgram(input as any)).pipe(
              Effect.orElseFail(() => new Error(`accepted: ${message}`))
            )
            expect(error).toBeInstanceOf(InvalidProgramError)
            expect(error.message).toContain(message)
          }
          const small = yield* ProgramExecutor.makeWith({ maxProgramBytes: 100 })
          const tooLarge = yield* Effect.flip(small.createProgram({ jobs: ["a"], programData: { blob: "x".repeat(100) } }))
          expect(tooLarge.message).toContain("more than maxProgramBytes (100)")
          expect(yield* ProgramExecutor.list()).toEqual([])
          // What passes comes back exactly as it went in, on every dialect.
          const programData = {
            text: "naïve 😀 \\ \"quoted\" \n",
            numbers: [0, -1.5, 1e21, Number.MAX_SAFE_INTEGER],
            nested: { empty: {}, list: [], nothing: null, yes: true },
            "key with spaces": "ok"
          }
          const runId = yield* small.createProgram({ jobs: ["a"] }).pipe(
            Effect.zipRight(ProgramExecutor.createProgram({ jobs: ["a", "b"], programData, jobData: { b: { step: 1 } } }))
          )
          const stored = yield* ProgramExecutor.get(runId).pipe(Effect.map(Option.getOrThrow))
          expect(stored.programData).toEqual(programData)
          expect(stored.jobData).toEqual({ b: { step: 1 } })
        })))

    it.scopedLive("shutdown lets a running job finish within the grace period and records it", () =>
      Effect.gen(function*() {
        const started = yield* Deferred.make<void>()
        const steady = Job.make("steady", Effect.zipRight(Deferred.succeed(started, undefined), Effect.sleep("300 millis")))
        yield* run([steady], (workers) =>
          Effect.gen(function*() {
            const worker = yield* workers.start({ shutdownGrace: Duration.seconds(10) })
            const runId = yield* ProgramExecutor.createProgram({ jobs: ["steady"] })
            yield* Deferred.await(started)
            yield* Scope.close(worker, Exit.void)
            const program = yield* ProgramExecutor.get(runId).pipe(Effect.map(Option.getOrThrow))
            expect(program.finishedAt).not.toBeNull()
          }))
      }))

    it.scopedLive("shutdown interrupts a job past the grace period; the step is given back and runs again", () =>
      Effect.gen(function*() {
        const log = yield* Ref.make<ReadonlyArray<Execution>>([])
        const hang = yield* Ref.make(true)
        const stubborn = recorded(log, "stubborn", () =>
          Effect.flatMap(Ref.get(hang), (hangs) => hangs ? Effect.never : Effect.void))
        yield* run([stubborn], (workers) =>
          Effect.gen(function*() {
            const worker = yield* workers.start({ shutdownGrace: Duration.millis(100) })
            const runId = yield* ProgramExecutor.createProgram({ jobs: ["stubborn"] })
            // The job has started (a queue that claims ahead sets the lease before that).
            yield* pollUntil(Ref.get(log), (runs) => runs.length === 1).pipe(Effect.timeout("30 seconds"))
            yield* Scope.close(worker, Exit.void)
            const given = yield* ProgramExecutor.get(runId).pipe(Effect.map(Option.getOrThrow))
            expect(given.lockedBy).toBeNull()
            expect(given.finishedAt).toBeNull()
            expect(given.step).toBe(0)
            yield* Ref.set(hang, false)
            yield* workers.start()
            const program = yield* awaitProgram(runId)
            expect(program.finishedAt).not.toBeNull()
            expect((yield* Ref.get(log)).length).toBe(2)
          }))
      }))

    it.scopedLive("an abandoned run cannot write: a Promise job that timed out and went on is refused once the step is claimed again", () =>
      Effect.gen(function*() {
        const attempts = yield* Ref.make<ReadonlyArray<number>>([])
        const gate = yield* Deferred.make<void>()
        const abandonedWrite = yield* Deferred.make<string>()
        // The first run ignores its AbortSignal, outlives its timeout, then writes; the retry waits for that write.
        const stubborn = Job.fromPromise("stubborn_promise", async (ctx) => {
          Effect.runSync(Ref.update(attempts, (all) => [...all, ctx.attempt]))
          if (ctx.attempt === 1) {
            await Effect.runPromise(Deferred.await(gate))
            const outcome = await ctx.jobData.set({ from: "abandoned run" }).then(() => "stored", () => "refused")
            Effect.runSync(Deferred.succeed(abandonedWrite, outcome))
            return
          }
          await Effect.runPromise(Deferred.await(abandonedWrite))
        }, { timeout: "300 millis" })
        yield* run([stubborn], (workers) =>
          Effect.gen(function*() {
            yield* workers.start()
            const runId = yield* ProgramExecutor.createProgram({ jobs: ["stubborn_promise"] })
            yield* pollUntil(Ref.get(attempts), (all) => all.length === 2).pipe(Effect.timeout("20 seconds"))
            yield* Deferred.succeed(gate, undefined)
            expect(yield* Deferred.await(abandonedWrite).pipe(Effect.timeout("10 seconds"))).toBe("refused")
            const program = yield* awaitProgram(runId)
            expect(program.finishedAt).not.toBeNull()
            expect(program.jobData).toEqual({})
            expect(yield* Ref.get(attempts)).toEqual([1, 2])
          }))
      }))

    it.scopedLive("cancel and resume within one heartbeat on one worker: the step never runs twice at once and advances once", () =>
      Effect.gen(function*() {
        const log = yield* Ref.make<ReadonlyArray<Execution>>([])
        const active = yield* Ref.make(0)
        const peak = yield* Ref.make(0)
        const gate = yield* Deferred.make<void>()
        const held = recorded(log, "held", () =>
          Effect.acquireUseRelease(
            Ref.updateAndGet(active, (n) => n + 1).pipe(Effect.tap((n) => Ref.update(peak, (p) => Math.max(p, n)))),
            () => Deferred.await(gate),
            () => Ref.update(active, (n) => n - 1)
          ))
        yield* run([held, recorded(log, "after")], (workers) =>
          Effect.gen(function*() {
            const queue = yield* ProgramQueue
            yield* workers.start({ heartbeatInterval: Duration.seconds(2), leaseDuration: Duration.seconds(6) })
            const runId = yield* ProgramExecutor.createProgram({ jobs: ["held", "after"] })
            yield* pollUntil(Ref.get(log), (runs) => runs.length === 1).pipe(Effect.timeout("20 seconds"))
            yield* ProgramExecutor.cancel(runId, "oops")
            yield* ProgramExecutor.resume(runId)
            yield* queue.publish({ runId, step: 0 })
            // A later program finishing proves the worker has handled the wake-ups published before it.
            const later = yield* ProgramExecutor.createProgram({ jobs: ["after"] })
            yield* awaitProgram(later)
            yield* Deferred.succeed(gate, undefined)
            const program = yield* awaitProgram(runId)
            expect(program.finishedAt).not.toBeNull()
            const runs = (yield* Ref.get(log)).filter((execution) => execution.runId === runId)
            expect(runs.map((execution) => execution.job)).toEqual(["held", "after"])
            expect(yield* Ref.get(peak)).toBe(1)
          }))
      }))

    /** A job that signals its start, then ignores interruption until `release`. */
    const ignoringInterruption = Effect.gen(function*() {
      const started = yield* Deferred.make<void>()
      const release = yield* Deferred.make<void>()
      const job = (options?: Job.JobOptions) =>
        Job.make(
          "ignores_interrupts",
          Effect.zipRight(Deferred.succeed(started, undefined), Effect.uninterruptible(Deferred.await(release))),
          options
        )
      return {
        job,
        started: Deferred.await(started).pipe(Effect.timeout("20 seconds")),
        release: Deferred.succeed(release, undefined)
      }
    })

    it.scopedLive("a job that ignores interruption: its timeout frees the slot at once and the program moves on", () =>
      Effect.gen(function*() {
        const { job, release } = yield* ignoringInterruption
        yield* run([job({ timeout: "200 millis", maxAttempts: 1 }), Job.make("quick", Effect.void)], (workers) =>
          Effect.gen(function*() {
            yield* workers.start({ concurrency: 1 })
            const stuck = yield* ProgramExecutor.createProgram({ jobs: ["ignores_interrupts"] })
            const next = yield* ProgramExecutor.createProgram({ jobs: ["quick"] })
            // One slot: `next` runs only once the stubborn job's slot is free.
            expect((yield* awaitProgram(next, undefined, "10 seconds")).finishedAt).not.toBeNull()
            const failed = yield* awaitProgram(stuck, undefined, "10 seconds")
            expect(failed.errorMessage).toMatch(/timed out after/)
            expect(failed.lockedBy).toBeNull()
          }).pipe(Effect.ensuring(release)))
      }))

    it.scopedLive("a job that ignores interruption: cancelling it frees the slot at the next heartbeat", () =>
      Effect.gen(function*() {
        const { job, release, started } = yield* ignoringInterruption
        yield* run([job(), Job.make("quick", Effect.void)], (workers) =>
          Effect.gen(function*() {
            yield* workers.start({ concurrency: 1 })
            const stuck = yield* ProgramExecutor.createProgram({ jobs: ["ignores_interrupts"] })
            yield* started
            yield* ProgramExecutor.cancel(stuck, "stop it")
            const next = yield* ProgramExecutor.createProgram({ jobs: ["quick"] })
            expect((yield* awaitProgram(next, undefined, "10 seconds")).finishedAt).not.toBeNull()
            const cancelled = yield* awaitProgram(stuck, (program) => program.lockedBy === null, "10 seconds")
            expect(cancelled.errorMessage).toBe("stop it")
          }).pipe(Effect.ensuring(release)))
      }))

    it.scopedLive("a job that ignores interruption cannot hold a shutdown past its grace; the step is given back", () =>
      Effect.gen(function*() {
        const { job, release, started } = yield* ignoringInterruption
        yield* run([job()], (workers) =>
          Effect.gen(function*() {
            const worker = yield* workers.start({ shutdownGrace: Duration.millis(100) })
            const runId = yield* ProgramExecutor.createProgram({ jobs: ["ignores_interrupts"] })
            yield* started
            const closed = yield* Scope.close(worker, Exit.void).pipe(Effect.timeout("5 seconds"), Effect.option)
            expect(Option.isSome(closed)).toBe(true)
            const given = yield* ProgramExecutor.get(runId).pipe(Effect.map(Option.getOrThrow))
            expect(given).toMatchObject({ step: 0, lockedBy: null, finishedAt: null, erroredAt: null })
          }).pipe(Effect.ensuring(release)))
      }))

    it.scopedLive("a step whose runs were lost more than maxLostRuns times fails naming the job; a lost run counts as an attempt", () =>
      Effect.gen(function*() {
        const log = yield* Ref.make<ReadonlyArray<Execution>>([])
        yield* run([recorded(log, "a")], (workers) =>
          Effect.gen(function*() {
            const repository = yield* ProgramRepository
            const doomed = yield* ProgramExecutor.createProgram({ jobs: ["a"] })
            const survivor = yield* ProgramExecutor.createProgram({ jobs: ["a"] })
            // Workers that claim a step and die: nothing recorded, the lease expires, the next claim counts it.
            const dieHolding = (runId: string) =>
              pollUntil(
                repository.claim({ runId, step: 0 }, { owner: "dying-worker", leaseFor: Duration.millis(150) }),
                Option.isSome
              ).pipe(Effect.timeout("10 seconds"))
            for (let i = 0; i < 3; i++) yield* dieHolding(doomed)
            yield* dieHolding(survivor)
            yield* workers.start({ maxLostRuns: 2 })
            const failed = yield* awaitProgram(doomed)
            expect(failed.erroredAt).not.toBeNull()
            expect(failed.errorMessage).toMatch(/worker lost 3 time\(s\) running job "a" \(more than maxLostRuns \(2\)\)/)
            const finished = yield* awaitProgram(survivor)
            expect(finished.finishedAt).not.toBeNull()
            const runs = yield* Ref.get(log)
            expect(runs.filter((execution) => execution.runId === doomed)).toEqual([])
            expect(runs.filter((execution) => execution.runId === survivor).map((execution) => execution.attempt))
              .toEqual([2])
          }))
      }))

    for (const failure of ["lost", "unanswered"] as const) {
      it.scopedLive(`a heartbeat that finds the lease ${failure === "lost" ? "lost" : "unreachable past its expiry"} interrupts the job; nothing advances under it`, () =>
        Effect.gen(function*() {
          const log = yield* Ref.make<ReadonlyArray<Execution>>([])
          const interrupted = yield* Deferred.make<void>()
          const active = yield* Ref.make(0)
          const peak = yield* Ref.make(0)
          const job = recorded(log, "watched", (ctx) =>
            Effect.acquireUseRelease(
              Ref.updateAndGet(active, (n) => n + 1).pipe(Effect.tap((n) => Ref.update(peak, (p) => Math.max(p, n)))),
              () => ctx.attempt === 1 ? Effect.onInterrupt(Effect.never, () => Deferred.succeed(interrupted, undefined)) : Effect.void,
              () => Ref.update(active, (n) => n - 1)
            ))
          // The first claim's extensions answer "lost", or fail as a hung connection would.
          let firstToken: string | undefined
          const decorate = (repository: ProgramRepository["Type"]): ProgramRepository["Type"] => ({
            ...repository,
            extendLease: (lease, leaseFor) => {
              firstToken ??= lease.token
              if (lease.token !== firstToken) return repository.extendLease(lease, leaseFor)
              return failure === "lost"
                ? Effect.succeed("lost" as const)
                : Effect.fail(new RepositoryError({ message: "connection timed out" }))
            }
          })
          yield* run([job], (workers) =>
            Effect.gen(function*() {
              yield* workers.start({ leaseDuration: Duration.millis(800), heartbeatInterval: Duration.millis(100) })
              const runId = yield* ProgramExecutor.createProgram({ jobs: ["watched"] })
              yield* Deferred.await(interrupted).pipe(Effect.timeout("10 seconds"))
              const program = yield* awaitProgram(runId)
              expect(program.finishedAt).not.toBeNull()
              const runs = (yield* Ref.get(log)).filter((execution) => execution.runId === runId)
              expect(runs.map((execution) => execution.attempt)).toEqual([1, 2])
              expect(yield* Ref.get(peak)).toBe(1)
            }), undefined, decorate)
        }))
    }

    it.scopedLive.skipIf(options.claimsWhileDequeuing)("wake-ups no table could hold never reach the database; one the database refuses is acked as poison", () =>
      Effect.gen(function*() {
        const claims = new Map<string, number>()
        const decorate = (repository: ProgramRepository["Type"]): ProgramRepository["Type"] => ({
          ...repository,
          claim: (target, options) => {
            claims.set(target.runId, (claims.get(target.runId) ?? 0) + 1)
            return target.runId === "refused-by-the-database"
              ? Effect.fail(new RepositoryError({ message: "invalid input syntax", transient: false }))
              : repository.claim(target, options)
          }
        })
        const poisoned = Metric.counter("program_executor_wakeups_poisoned_total", { incremental: true })
        yield* run([Job.make("quick", Effect.void)], (workers) =>
          Effect.gen(function*() {
            const queue = yield* ProgramQueue
            const before = (yield* Metric.value(poisoned)).count
            yield* workers.start()
            yield* queue.publish({ runId: "nul\u0000inside", step: 0 })
            yield* queue.publish({ runId: "out-of-range", step: 2 ** 31 })
            yield* queue.publish({ runId: "refused-by-the-database", step: 0 })
            const runId = yield* ProgramExecutor.createProgram({ jobs: ["quick"] })
            yield* awaitProgram(runId)
            // (A broker adapter may drop the malformed ones itself, before the executor; either way none is claimed.)
            yield* pollUntil(Metric.value(poisoned), (state) => state.count - before >= 1).pipe(Effect.timeout("10 seconds"))
            // Acked, not returned to the queue: a later program finishing shows no redelivery was claimed again.
            yield* awaitProgram(yield* ProgramExecutor.createProgram({ jobs: ["quick"] }))
            expect(claims.get("nul\u0000inside")).toBeUndefined()
            expect(claims.get("out-of-range")).toBeUndefined()
            expect(claims.get("refused-by-the-database")).toBe(1)
          }), undefined, decorate)
      }))

    it.scopedLive("text the database cannot store (NUL) in a failure or in job data still gets the program an outcome", () =>
      Effect.gen(function*() {
        const nulMessage = Job.make("nul_message", Effect.fail(new FatalError({ message: "bad \u0000 byte" })))
        const nulData = Job.make(
          "nul_data",
          Effect.flatMap(JobContext, (ctx) => ctx.jobData.set({ text: "bad \u0000 byte" }))
        )
        yield* run([nulMessage, nulData, Job.make("quick", Effect.void)], (workers) =>
          Effect.gen(function*() {
            yield* workers.start()
            const message = yield* ProgramExecutor.createProgram({ jobs: ["nul_message"] })
            const data = yield* ProgramExecutor.createProgram({ jobs: ["nul_data"] })
            const quick = yield* ProgramExecutor.createProgram({ jobs: ["quick"] })
            expect((yield* awaitProgram(message, undefined, "10 seconds")).errorMessage).toBe("bad \\u0000 byte")
            // PostgreSQL's jsonb refuses NUL: the job fails with the database's message; elsewhere it is stored.
            const stored = yield* awaitProgram(data, undefined, "10 seconds")
            if (stored.erroredAt === null) expect(stored.jobData).toEqual({ nul_data: { text: "bad \u0000 byte" } })
            else expect(stored.errorMessage).toMatch(/job data cannot be stored/)
            expect((yield* awaitProgram(quick)).finishedAt).not.toBeNull()
          }))
      }))

    it.scopedLive("concurrent merges of a job's data lose nothing, typed or not", () =>
      Effect.gen(function*() {
        const merges = (merge: (partial: { a?: number; b?: number; c?: number }) => Effect.Effect<void, any>) =>
          Effect.all([merge({ a: 1 }), merge({ b: 2 }), merge({ c: 3 })], { concurrency: 3, discard: true })
        const typed = Job.make(
          "typed",
          {
            jobData: Schema.Struct({
              a: Schema.optional(Schema.Number),
              b: Schema.optional(Schema.Number),
              c: Schema.optional(Schema.Number)
            })
          },
          (ctx) => merges(ctx.jobData.merge)
        )
        const untyped = Job.make("untyped", Effect.flatMap(JobContext, (ctx) => merges(ctx.jobData.merge)))
        yield* run([typed, untyped], (workers) =>
          Effect.gen(function*() {
            yield* workers.start()
            const runId = yield* ProgramExecutor.createProgram({ jobs: ["typed", "untyped"] })
            expect((yield* awaitProgram(runId)).jobData).toEqual({
              typed: { a: 1, b: 2, c: 3 },
              untyped: { a: 1, b: 2, c: 3 }
            })
          }))
      }))

    describe("continuation", () => {
      /** Counts the continuations and checks that each one continues from the token the one before it made. */
      const watchContinuations = () => {
        const continued: Array<{ readonly step: number; readonly from: string; readonly to: string }> = []
        const decorate = (repository: ProgramRepository["Type"]): ProgramRepository["Type"] => ({
          ...repository,
          advanceAndClaim: (lease, options) =>
            Effect.tap(repository.advanceAndClaim(lease, options), (next) =>
              Effect.sync(() => {
                if (Option.isSome(next)) continued.push({ step: lease.step, from: lease.token, to: options.nextToken })
              }))
        })
        return { continued, decorate }
      }

      it.scopedLive("a program's steps run back to back under a fresh token each, at most maxConsecutiveSteps per message", () =>
        Effect.gen(function*() {
          const log = yield* Ref.make<ReadonlyArray<Execution>>([])
          const names = ["j0", "j1", "j2", "j3", "j4", "j5", "j6"]
          for (const [cap, expected] of [[3, [0, 1, 3, 4]], [1, []], [20, [0, 1, 2, 3, 4, 5]]] as const) {
            const { continued, decorate } = watchContinuations()
            yield* run(names.map((name) => recorded(log, name)), (workers) =>
              Effect.gen(function*() {
                yield* workers.start({ maxConsecutiveSteps: cap })
                const runId = yield* ProgramExecutor.createProgram({ jobs: names })
                const program = yield* awaitProgram(runId)
                expect(program.finishedAt).not.toBeNull()
                const runs = (yield* Ref.get(log)).filter((execution) => execution.runId === runId)
                expect(runs.map((execution) => [execution.step, execution.attempt])).toEqual(names.map((_, i) => [i, 1]))
                // With a cap of 3: steps 0–2 on the first message, 3–5 on the next, 6 alone.
                expect(continued.map((continuation) => continuation.step)).toEqual(expected)
                for (let i = 1; i < continued.length; i++) {
                  if (continued[i]!.step === continued[i - 1]!.step + 1) expect(continued[i]!.from).toBe(continued[i - 1]!.to)
                }
                expect(new Set(continued.map((continuation) => continuation.to)).size).toBe(continued.length)
              }), undefined, decorate)
          }
        }))

      it.scopedLive("a program cancelled while a step of its chain runs stops there: the continuation is refused", () =>
        Effect.gen(function*() {
          const log = yield* Ref.make<ReadonlyArray<Execution>>([])
          const started = yield* Deferred.make<void>()
          const release = yield* Deferred.make<void>()
          const gate = recorded(log, "gate", () => Effect.zipRight(Deferred.succeed(started, undefined), Deferred.await(release)))
          yield* run([recorded(log, "a"), gate, recorded(log, "c"), recorded(log, "other")], (workers) =>
            Effect.gen(function*() {
              // A heartbeat too slow to see the cancel: only the continuation's guard can.
              yield* workers.start({ concurrency: 1, leaseDuration: Duration.seconds(30), heartbeatInterval: Duration.seconds(20) })
              const runId = yield* ProgramExecutor.createProgram({ jobs: ["a", "gate", "c"] })
              yield* Deferred.await(started).pipe(Effect.timeout("20 seconds"))
              yield* ProgramExecutor.cancel(runId, "stop the chain")
              yield* Deferred.succeed(release, undefined)
              // One slot: the next program runs once the chain has let go of it.
              yield* awaitProgram(yield* ProgramExecutor.createProgram({ jobs: ["other"] }))
              const program = yield* ProgramExecutor.get(runId).pipe(Effect.map(Option.getOrThrow))
              // Its lease released, not left on the errored row until it expires.
              expect(program).toMatchObject({ step: 1, errorMessage: "stop the chain", finishedAt: null, lockedBy: null })
              const runs = (yield* Ref.get(log)).filter((execution) => execution.runId === runId)
              expect(runs.map((execution) => execution.job)).toEqual(["a", "gate"])
            }))
        }))

      it.scopedLive("a next job this worker does not know is not continued into: its step goes through the queue", () =>
        Effect.gen(function*() {
          const log = yield* Ref.make<ReadonlyArray<Execution>>([])
          const [a, b, c] = ["a", "b", "c"].map((name) => recorded(log, name))
          const { continued, decorate } = watchContinuations()
          yield* run([a!, b!, c!], (workers) =>
            Effect.gen(function*() {
              // Workers sharing a queue are meant to share a library; during a rolling deploy they may not. This one
              // skips what it lacks, so the step it must not continue into is delivered to it, and skipped.
              yield* workers.start({ onUnknownJob: "skip" }, [a!, b!])
              const runId = yield* ProgramExecutor.createProgram({ jobs: ["a", "b", "c"] })
              const program = yield* awaitProgram(runId)
              expect(program.finishedAt).not.toBeNull()
              expect((yield* Ref.get(log)).map((execution) => execution.job)).toEqual(["a", "b"])
              expect(continued.map((continuation) => continuation.step)).toEqual([0])
            }), undefined, decorate)
        }))

      /** Leases far longer than a test's bound: a next step must not wait for one to expire, nor for the sweeper. */
      const slow: Partial<ExecutorConfig.ExecutorOptions> = {
        leaseDuration: Duration.minutes(2),
        heartbeatInterval: Duration.seconds(1),
        staleAfter: Duration.minutes(2),
        sweepInterval: Duration.minutes(1),
        recoveryInterval: Duration.minutes(1)
      }

      it.scopedLive("a shutdown in the middle of a chain ends it at the running step; the next step is claimable at once", () =>
        Effect.gen(function*() {
          const log = yield* Ref.make<ReadonlyArray<Execution>>([])
          const started = yield* Deferred.make<void>()
          const release = yield* Deferred.make<void>()
          const firstStopped = yield* Ref.make(false)
          const ranAfterShutdown = yield* Ref.make<ReadonlyArray<boolean>>([])
          const gate = recorded(log, "gate", () => Effect.zipRight(Deferred.succeed(started, undefined), Deferred.await(release)))
          const after = recorded(log, "after", () =>
            Effect.flatMap(Ref.get(firstStopped), (stopped) => Ref.update(ranAfterShutdown, (seen) => [...seen, stopped])))
          yield* run([recorded(log, "a"), gate, after], (workers) =>
            Effect.gen(function*() {
              // The worker logs when its shutdown begins waiting for the running step.
              const waiting = yield* Deferred.make<void>()
              const watcher = Logger.make(({ message }) => {
                if ([message].flat().join(" ").startsWith("shutting down")) Deferred.unsafeDone(waiting, Exit.void)
              })
              const first = yield* workers.start({ ...slow, shutdownGrace: Duration.seconds(20) }).pipe(
                Effect.provide(Logger.add(watcher))
              )
              const runId = yield* ProgramExecutor.createProgram({ jobs: ["a", "gate", "after"] })
              yield* Deferred.await(started).pipe(Effect.timeout("20 seconds"))
              const stopping = yield* Effect.fork(Scope.close(first, Exit.void))
              // Let the step finish within the grace, once the shutdown has begun.
              yield* Deferred.await(waiting).pipe(Effect.timeout("10 seconds"))
              yield* Deferred.succeed(release, undefined)
              yield* Fiber.join(stopping)
              yield* Ref.set(firstStopped, true)
              const between = yield* ProgramExecutor.get(runId).pipe(Effect.map(Option.getOrThrow))
              expect(between).toMatchObject({ step: 2, lockedBy: null, finishedAt: null })
              yield* workers.start(slow)
              const program = yield* awaitProgram(runId, undefined, "20 seconds")
              expect(program.finishedAt).not.toBeNull()
              expect(yield* Ref.get(ranAfterShutdown)).toEqual([true])
            }))
        }))

      it.scopedLive("a shutdown that interrupts a continued step gives it back and wakes it: it runs again at once elsewhere", () =>
        Effect.gen(function*() {
          const log = yield* Ref.make<ReadonlyArray<Execution>>([])
          const hang = yield* Ref.make(true)
          const stubborn = recorded(log, "stubborn", () => Effect.flatMap(Ref.get(hang), (hangs) => hangs ? Effect.never : Effect.void))
          yield* run([recorded(log, "a"), stubborn], (workers) =>
            Effect.gen(function*() {
              const first = yield* workers.start({ ...slow, shutdownGrace: Duration.millis(100) })
              const runId = yield* ProgramExecutor.createProgram({ jobs: ["a", "stubborn"] })
              yield* pollUntil(Ref.get(log), (runs) => runs.length === 2).pipe(Effect.timeout("30 seconds"))
              yield* Scope.close(first, Exit.void)
              const given = yield* ProgramExecutor.get(runId).pipe(Effect.map(Option.getOrThrow))
              expect(given).toMatchObject({ step: 1, lockedBy: null, finishedAt: null })
              yield* Ref.set(hang, false)
              yield* workers.start(slow)
              const program = yield* awaitProgram(runId, undefined, "20 seconds")
              expect(program.finishedAt).not.toBeNull()
              expect((yield* Ref.get(log)).map((execution) => execution.job)).toEqual(["a", "stubborn", "stubborn"])
            }))
        }))
    })

    it.scopedLive("several workers on one storage: many programs, each step run and advanced once", () =>
      Effect.gen(function*() {
        const log = yield* Ref.make<ReadonlyArray<Execution>>([])
        const jobNames = ["s0", "s1", "s2", "s3"]
        yield* run(jobNames.map((job) => recorded(log, job)), (workers) =>
          Effect.gen(function*() {
            yield* Effect.forEach([1, 2, 3], () => workers.start({ concurrency: 4 }))
            const runIds = yield* Effect.forEach(
              Array.from({ length: 60 }),
              () => ProgramExecutor.createProgram({ jobs: jobNames }),
              { concurrency: 8 }
            )
            const programs = yield* awaitAll(runIds, "60 seconds")
            expect(programs.every((program) => program.finishedAt !== null && program.step === 3)).toBe(true)
            const runs = yield* Ref.get(log)
            expect(runs.length).toBe(60 * 4)
            expect(new Set(runs.map((execution) => `${execution.runId}/${execution.step}`)).size).toBe(60 * 4)
          }))
      }))

    it.scopedLive("createPrograms stores and runs every program; one invalid input stores none", () =>
      Effect.gen(function*() {
        const log = yield* Ref.make<ReadonlyArray<Execution>>([])
        yield* run([recorded(log, "a"), recorded(log, "b")], (workers) =>
          Effect.gen(function*() {
            const invalid = yield* Effect.flip(ProgramExecutor.createPrograms([
              { jobs: ["a"] },
              { jobs: ["a"], jobData: { b: {} } }
            ]))
            expect(invalid).toBeInstanceOf(InvalidProgramError)
            expect(invalid.message).toContain("inputs[1]: invalid program: jobData")
            expect((yield* Effect.flip(ProgramExecutor.createPrograms("x" as any)))._tag).toBe("InvalidProgramError")
            expect(yield* ProgramExecutor.list()).toEqual([])
            expect(yield* ProgramExecutor.createPrograms([])).toEqual([])

            yield* workers.start()
            const runIds = yield* ProgramExecutor.createPrograms(
              Array.from({ length: 30 }, (_, n) => ({ jobs: ["a", "b"], programData: { n } }))
            )
            expect(new Set(runIds).size).toBe(30)
            const programs = yield* awaitAll(runIds)
            expect(programs.map((program) => program.programData)).toEqual(runIds.map((_, n) => ({ n })))
            expect(programs.every((program) => program.finishedAt !== null)).toBe(true)
            expect((yield* Ref.get(log)).length).toBe(60)
          }))
      }))

    it.scopedLive("an idempotency key: every create returns the first program's runId, and it runs once", () =>
      Effect.gen(function*() {
        const log = yield* Ref.make<ReadonlyArray<Execution>>([])
        yield* run([recorded(log, "a"), recorded(log, "b")], (workers) =>
          Effect.gen(function*() {
            yield* workers.start()
            const runIds = yield* Effect.forEach(
              Array.from({ length: 10 }),
              (_, n) => ProgramExecutor.createProgram({ jobs: ["a"], programData: { n }, idempotencyKey: "order-7" }),
              { concurrency: "unbounded" }
            )
            expect(new Set(runIds).size).toBe(1)
            yield* awaitProgram(runIds[0]!)
            // Finished, and a different program under the same key: still the same one, nothing created.
            const again = yield* ProgramExecutor.createProgram({ jobs: ["b"], idempotencyKey: "order-7" })
            const batch = yield* ProgramExecutor.createPrograms([
              { jobs: ["a"], idempotencyKey: "order-7" },
              { jobs: ["a"], idempotencyKey: "order-8" },
              { jobs: ["a"], idempotencyKey: "order-8" }
            ])
            expect(again).toBe(runIds[0])
            expect(batch[0]).toBe(runIds[0])
            expect(batch[1]).toBe(batch[2])
            yield* awaitProgram(batch[1]!)
            expect((yield* ProgramExecutor.list()).length).toBe(2)
            expect((yield* Ref.get(log)).map((execution) => execution.job)).toEqual(["a", "a"])
            const invalid = yield* Effect.flip(ProgramExecutor.createProgram({ jobs: ["a"], idempotencyKey: "" }))
            expect(invalid.message).toContain("idempotencyKey")
          }))
      }))

    it.scopedLive("a delayed start: the first step runs once it is due, not before, whatever the sweeper does", () =>
      Effect.gen(function*() {
        const ranAt = yield* Deferred.make<number>()
        const timed = Job.make("timed", Effect.flatMap(Effect.sync(() => Date.now()), (now) => Deferred.succeed(ranAt, now)))
        yield* run([timed], (workers) =>
          Effect.gen(function*() {
            yield* workers.start()
            const before = Date.now()
            // Longer than staleAfter (500 ms): a sweeper that ignored next_run_at would wake it early.
            const runId = yield* ProgramExecutor.createProgram({ jobs: ["timed"], startAfter: "1200 millis" })
            const ran = yield* Deferred.await(ranAt).pipe(Effect.timeout("20 seconds"))
            // The database's clock is this machine's; MySQL keeps milliseconds, truncated.
            expect(ran).toBeGreaterThanOrEqual(before + 1200 - 2)
            const program = yield* awaitProgram(runId)
            expect(program.finishedAt).not.toBeNull()

            const at = new Date(Date.now() + 800)
            const later = yield* ProgramExecutor.createProgram({ jobs: ["timed"], startAt: at.toISOString() })
            expect((yield* ProgramExecutor.get(later).pipe(Effect.map(Option.getOrThrow))).nextRunAt.getTime())
              .toBe(at.getTime())
            const both = yield* Effect.flip(
              ProgramExecutor.createProgram({ jobs: ["timed"], startAt: at, startAfter: 10 })
            )
            expect(both.message).toContain("not both")
            for (const startAfter of [-1, "soon", Infinity]) {
              const error = yield* Effect.flip(ProgramExecutor.createProgram({ jobs: ["timed"], startAfter } as any))
              expect(error.message).toContain("startAfter")
            }
            expect((yield* Effect.flip(ProgramExecutor.createProgram({ jobs: ["timed"], startAt: "never" }))).message)
              .toContain("startAt")
          }))
      }))

    it.scopedLive("cancelMany and resumeMany change the programs matching the filter and return how many", () =>
      Effect.gen(function*() {
        const log = yield* Ref.make<ReadonlyArray<Execution>>([])
        const broken = yield* Ref.make(true)
        const report = recorded(log, "send_report", () =>
          Effect.flatMap(Ref.get(broken), (isBroken) =>
            isBroken ? Effect.fail(new FatalError({ message: "mail server down" })) : Effect.void))
        yield* run([recorded(log, "a"), report], (workers) =>
          Effect.gen(function*() {
            // Not started yet: nothing runs until the workers start.
            const waiting = yield* ProgramExecutor.createPrograms(
              Array.from({ length: 4 }, (_, n) => ({ jobs: ["a"], programData: { group: n < 3 ? "x" : "y" } }))
            )
            expect(yield* ProgramExecutor.cancelMany({ dataContains: { group: "x" } }, "not needed")).toBe(3)
            expect(yield* ProgramExecutor.cancelMany({ dataContains: { group: "x" } })).toBe(0)
            expect((yield* Effect.flip(ProgramExecutor.cancelMany({ stepRetryCountGte: -1 })))._tag)
              .toBe("InvalidProgramError")
            yield* workers.start()
            const done = yield* awaitProgram(waiting[3]!)
            expect(done.finishedAt).not.toBeNull()
            const cancelled = yield* awaitProgram(waiting[0]!)
            expect(cancelled.errorMessage).toBe("not needed")

            const reports = yield* ProgramExecutor.createPrograms(
              Array.from({ length: 3 }, () => ({ jobs: ["a", "send_report"] }))
            )
            const failed = yield* awaitAll(reports)
            expect(failed.every((program) => program.erroredAt !== null && program.step === 1)).toBe(true)
            yield* Ref.set(broken, false)
            expect(yield* ProgramExecutor.resumeMany({ status: "errored", job: "send_report" })).toBe(3)
            const resumed = yield* awaitAll(reports)
            expect(resumed.every((program) => program.finishedAt !== null)).toBe(true)
            // The cancelled ones were not resumed (their current job is "a").
            expect((yield* ProgramExecutor.get(waiting[0]!).pipe(Effect.map(Option.getOrThrow))).erroredAt).not.toBeNull()
          }))
      }))

    it.scopedLive("a worker with pruneFinishedAfter deletes old finished programs periodically, nothing else", () =>
      run([Job.make("a", Effect.void)], (workers) =>
        Effect.gen(function*() {
          yield* workers.start()
          const waiting = yield* ProgramExecutor.createProgram({ jobs: ["a"], startAfter: "1 hour" })
          const cancelled = yield* ProgramExecutor.createProgram({ jobs: ["a"], startAfter: "1 hour" })
          yield* ProgramExecutor.cancel(cancelled)
          const finished = yield* ProgramExecutor.createPrograms([{ jobs: ["a"] }, { jobs: ["a"] }])
          yield* awaitAll(finished)
          yield* workers.start({ pruneFinishedAfter: Duration.millis(1), pruneInterval: Duration.millis(100) })
          const left = yield* pollUntil(
            Effect.map(ProgramExecutor.list(), (programs) => programs.map((program) => program.runId).sort()),
            (runIds) => runIds.length <= 2
          ).pipe(Effect.timeout("20 seconds"))
          expect(left).toEqual([waiting, cancelled].sort())
        })))

    it.scopedLive("prune deletes finished and errored programs older than the cutoffs; dryRun only counts", () =>
      run([Job.make("a", Effect.void)], (workers) =>
        Effect.gen(function*() {
          yield* workers.start()
          const finished = yield* ProgramExecutor.createPrograms([{ jobs: ["a"] }, { jobs: ["a"] }])
          yield* awaitAll(finished)
          const errored = yield* ProgramExecutor.createProgram({ jobs: ["a"], startAfter: "1 hour" })
          yield* ProgramExecutor.cancel(errored)
          const waiting = yield* ProgramExecutor.createProgram({ jobs: ["a"], startAfter: "1 hour" })
          const future = new Date(Date.now() + 60_000)
          const all = { finishedBefore: future, erroredBefore: future }
          expect(yield* ProgramExecutor.prune({ ...all, dryRun: true })).toEqual({ finished: 2, errored: 1, dryRun: true })
          expect((yield* ProgramExecutor.list()).length).toBe(4)
          expect(yield* ProgramExecutor.prune({ finishedBefore: new Date(0), erroredBefore: new Date(0) })).toEqual({
            finished: 0,
            errored: 0,
            dryRun: false
          })
          expect(yield* ProgramExecutor.prune({ ...all, batchSize: 1 })).toEqual({ finished: 2, errored: 1, dryRun: false })
          expect((yield* ProgramExecutor.list()).map((program) => program.runId)).toEqual([waiting])
          expect((yield* Effect.flip(ProgramExecutor.prune({ finishedBefore: new Date(NaN) })))._tag)
            .toBe("InvalidProgramError")
        })))
  })

