/**
 * What the executor does with each kind of failure a job can produce (`internal/classify.ts`), and a storage write
 * that fails once (`internal/retry.ts`), through the test kit on `TestClock`. The program's row shows the message
 * and whether it was retried; the `ProgramErrored` event tells an ignored failure from a fatal one (both set
 * `erroredAt`). Each case was seen failing with the decision it pins mutated (Stryker, `pnpm test:mutation`).
 */
import { describe, expect, it } from "@effect/vitest"
import {
  ExecutionTimeExceededError,
  Job,
  JobContext,
  type JobError,
  ProgramEvents,
  ProgramExecutor,
  ProgramExecutorTest,
  ProgramQueue,
  ProgramRepository,
  RepositoryError,
  RetryableError,
  IgnorableError
} from "@program-executor/core"
import { Chunk, Context, Effect, Fiber, Layer, Ref, Schedule, Stream } from "effect"

/** Fails (or dies) with `value` on the first run only; a job that is retried therefore finishes. */
const failingOnce = (name: string, fail: (value: unknown) => Effect.Effect<never, any>, value: unknown) =>
  Job.make(
    name,
    Effect.flatMap(JobContext, (ctx) => ctx.attempt === 1 ? fail(value) : Effect.void)
  )

const failWith = (value: unknown) => Effect.fail(value as JobError)

interface Outcome {
  readonly finished: boolean
  readonly errorMessage: string | null
  /** `true` / `false` from the `ProgramErrored` event; `undefined` when the program did not stop. */
  readonly ignorable: boolean | undefined
}

/** Runs a one-job program per job, to its end, and reports each program's outcome by job name. */
const outcomes = (jobs: ReadonlyArray<Job.Job>) =>
  Effect.gen(function*() {
    const ignorable = new Map<string, boolean>()
    const events = yield* ProgramEvents.subscribe
    yield* events.pipe(
      Stream.runForEach((event) =>
        Effect.sync(() => {
          if (event._tag === "ProgramErrored") ignorable.set(event.job, event.ignorable)
        })
      ),
      Effect.forkScoped
    )
    for (const job of jobs) yield* ProgramExecutor.createProgram({ jobs: [job.name] })
    const programs = yield* ProgramExecutorTest.runUntilIdle()
    return Object.fromEntries(programs.map((program): [string, Outcome] => [program.jobs[0]!, {
      finished: program.finishedAt !== null,
      errorMessage: program.errorMessage,
      ignorable: ignorable.get(program.jobs[0]!)
    }]))
  }).pipe(
    Effect.provide(ProgramExecutorTest.layer({ jobs, config: { retrySchedule: Schedule.spaced("1 second") } })),
    Effect.scoped
  )

const fatal = (errorMessage: string): Outcome => ({ finished: false, errorMessage, ignorable: false })
const ignored = (errorMessage: string): Outcome => ({ finished: false, errorMessage, ignorable: true })
const retried = (errorMessage: string): Outcome => ({ finished: true, errorMessage, ignorable: undefined })

describe("job failures: what the executor does with each", () => {
  it.effect("any value a job fails with gets a readable message; without a seed flag it is fatal", () =>
    Effect.gen(function*() {
      const cyclic: Record<string, unknown> = {}
      cyclic.self = cyclic
      const cases: ReadonlyArray<readonly [string, unknown, Outcome]> = [
        ["string", "plain text", fatal("plain text")],
        ["message_not_text", { message: 42 }, fatal(`{"message":42}`)],
        // An empty message says nothing: the whole value is shown instead.
        ["empty_message", { message: "", code: "E1" }, fatal(`{"message":"","code":"E1"}`)],
        ["no_message", { reason: "quota" }, fatal(`{"reason":"quota"}`)],
        ["nothing", undefined, fatal("undefined")],
        ["not_json", cyclic, fatal("[object Object]")],
        // A seed flag counts only when it is `true`.
        ["flag_false", { message: "not retryable", retryable: false, ignorable: false }, fatal("not retryable")],
        ["seed_ignorable", { message: "gone", ignorable: true }, ignored("gone")],
        ["seed_retryable", { message: "again", retryable: true }, retried("again")]
      ]
      const results = yield* outcomes(cases.map(([name, value]) => failingOnce(name, failWith, value)))
      for (const [name, , expected] of cases) expect([name, results[name]]).toEqual([name, expected])
    }))

  it.effect("a defect is fatal unless it carries a seed flag, even a typed failure thrown as a defect", () =>
    Effect.gen(function*() {
      const cases: ReadonlyArray<readonly [string, unknown, Outcome]> = [
        ["crash", new Error("crash"), fatal("crash")],
        ["die_retryable", Object.assign(new Error("die again"), { retryable: true }), retried("die again")],
        ["die_ignorable", Object.assign(new Error("die gone"), { ignorable: true }), ignored("die gone")],
        // Only `checkpoint` may fail this way (retried, uncounted); died with, it is a defect like any other.
        [
          "die_time_exceeded",
          new ExecutionTimeExceededError({ message: "over budget", elapsedMillis: 2, budgetMillis: 1 }),
          fatal("over budget")
        ]
      ]
      const results = yield* outcomes(cases.map(([name, value]) => failingOnce(name, Effect.die, value)))
      for (const [name, , expected] of cases) expect([name, results[name]]).toEqual([name, expected])
    }))

  it.effect("fromPromise: our own errors reach the caller as themselves; a seed error keeps its code", () =>
    Effect.gen(function*() {
      const own = new RetryableError({ message: "own" })
      const ownIgnorable = new IgnorableError({ message: "own ignorable" })
      const rejecting = (value: unknown) => Job.fromPromise("inner", () => Promise.reject(value))
      const seen = yield* Ref.make<ReadonlyArray<JobError>>([])
      // The caller: a job running another job's effect (as job code composing jobs does) and keeping its failure.
      const caller = Job.make(
        "caller",
        Effect.forEach(
          [
            own,
            ownIgnorable,
            Object.assign(new Error("rate limited"), { retryable: true, code: 429 }),
            Object.assign(new Error("no such file"), { ignorable: true, code: "ENOENT" }),
            Object.assign(new Error("odd code"), { retryable: true, code: { status: 500 } })
          ],
          (value) =>
            Effect.catchAll(Effect.asVoid(rejecting(value).run), (error) => Ref.update(seen, (all) => [...all, error])),
          { discard: true }
        )
      )
      const results = yield* outcomes([caller])
      expect(results.caller).toEqual({ finished: true, errorMessage: null, ignorable: undefined })
      const [first, second, ...seed] = yield* Ref.get(seen)
      expect(first).toBe(own)
      expect(second).toBe(ownIgnorable)
      expect(seed.map((error) => [error._tag, error.message, (error as { readonly code?: unknown }).code])).toEqual([
        ["RetryableError", "rate limited", 429],
        ["IgnorableError", "no such file", "ENOENT"],
        // Only a string or a number is a code.
        ["RetryableError", "odd code", undefined]
      ])
    }))

  it.effect("a storage write that fails once is retried: the step advances once, its job ran once", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      let failures = 0
      // The first `advance` fails as an unreachable database would; the executor's storage retry must try again.
      const storage = Layer.map(
        Layer.merge(ProgramRepository.layerMemory, ProgramQueue.layerMemory),
        (context) => {
          const repository = Context.get(context, ProgramRepository)
          const firstFails = <A>(write: Effect.Effect<A, RepositoryError>) =>
            Effect.suspend(() =>
              failures++ === 0 ? Effect.fail(new RepositoryError({ message: "connection reset" })) : write
            )
          return Context.add(context, ProgramRepository, {
            ...repository,
            advance: (lease, options) => firstFails(repository.advance(lease, options)),
            // The first step's advance is a continuation (both jobs are here): the same first write fails.
            advanceAndClaim: (lease, options) => firstFails(repository.advanceAndClaim(lease, options))
          })
        }
      )
      const job = Job.make("once", Ref.update(runs, (n) => n + 1))
      const program = yield* ProgramExecutorTest.runProgram({ jobs: ["once", "once"] }, { jobs: [job], storage })
      expect(program.finishedAt).not.toBeNull()
      expect(failures).toBe(3)
      expect(yield* Ref.get(runs)).toBe(2)
    }))

  it.effect("the retry decision names the job in its events: each retry, then giving up at maxAttempts", () =>
    Effect.gen(function*() {
      const failing = Job.make("flaky", Effect.fail(new RetryableError({ message: "down" })), { maxAttempts: 2 })
      const events = yield* Effect.gen(function*() {
        const stream = yield* ProgramEvents.subscribe
        const collected = yield* stream.pipe(
          Stream.filter((event) => event._tag === "RetryScheduled" || event._tag === "ProgramErrored"),
          Stream.take(2),
          Stream.runCollect,
          Effect.fork
        )
        yield* ProgramExecutor.createProgram({ jobs: ["flaky"] })
        yield* ProgramExecutorTest.runUntilIdle()
        return Chunk.toArray(yield* Fiber.join(collected))
      }).pipe(Effect.provide(ProgramExecutorTest.layer({ jobs: [failing] })), Effect.scoped)
      expect(events.map((event) => [event._tag, event.job, event.errorMessage])).toEqual([
        ["RetryScheduled", "flaky", "down"],
        ["ProgramErrored", "flaky", "gave up after 2 attempt(s): down"]
      ])
    }))

  it.effect("a retry the storage refuses (the lease was lost) is not announced; the step runs again after the lease", () =>
    Effect.gen(function*() {
      let refused = 0
      const storage = Layer.map(
        Layer.merge(ProgramRepository.layerMemory, ProgramQueue.layerMemory),
        (context) => {
          const repository = Context.get(context, ProgramRepository)
          return Context.add(context, ProgramRepository, {
            ...repository,
            scheduleRetry: (lease, options) =>
              Effect.suspend(() => refused++ === 0 ? Effect.succeed(false) : repository.scheduleRetry(lease, options))
          })
        }
      )
      const retries = yield* Ref.make(0)
      const program = yield* Effect.gen(function*() {
        const stream = yield* ProgramEvents.subscribe
        yield* stream.pipe(
          Stream.runForEach((event) => event._tag === "RetryScheduled" ? Ref.update(retries, (n) => n + 1) : Effect.void),
          Effect.forkScoped
        )
        const runId = yield* ProgramExecutor.createProgram({ jobs: ["flaky"] })
        const programs = yield* ProgramExecutorTest.runUntilIdle()
        return programs.find((program) => program.runId === runId)!
      }).pipe(
        Effect.provide(ProgramExecutorTest.layer({ jobs: [failingOnce("flaky", failWith, new RetryableError({ message: "once" }))], storage })),
        Effect.scoped
      )
      // The second run came from the expired lease (a lost run), not from a recorded retry.
      expect(program.finishedAt).not.toBeNull()
      expect(yield* Ref.get(retries)).toBe(0)
    }))
})
