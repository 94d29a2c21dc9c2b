/**
 * Invariants that depend on time, proven deterministically on the memory services under `TestClock`, through the
 * user-facing test kit (`ProgramExecutorTest`).
 */
import { describe, expect, it } from "@effect/vitest"
import {
  ExecutorConfig,
  Job,
  ProgramEvents,
  ProgramExecutor,
  ProgramExecutorTest,
  ProgramQueue,
  ProgramRepository,
  QueueError,
  RetryableError
} from "@program-executor/core"
import { Chunk, Duration, Effect, Fiber, HashMap, Layer, Logger, Option, Ref, Schedule, Stream, Tracer } from "effect"

const failTimes = (name: string, times: number, counter: Ref.Ref<number>) =>
  Job.make(
    name,
    Effect.flatMap(Ref.updateAndGet(counter, (n) => n + 1), (n) =>
      n <= times ? Effect.fail(new RetryableError({ message: `failure ${n}` })) : Effect.void)
  )

describe("ProgramExecutorTest", () => {
  it.effect("runs to completion deterministically: retries, backoff and time are simulated", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const retries = yield* Ref.make<ReadonlyArray<number>>([])
      const program = yield* Effect.gen(function*() {
        const events = yield* ProgramEvents.subscribe
        yield* events.pipe(
          Stream.runForEach((event) =>
            event._tag === "RetryScheduled"
              ? Ref.update(retries, (delays) => [...delays, Duration.toSeconds(event.delay)])
              : Effect.void
          ),
          Effect.forkScoped
        )
        yield* ProgramExecutor.createProgram({ jobs: ["flaky"] })
        const [program] = yield* ProgramExecutorTest.runUntilIdle()
        return program!
      }).pipe(
        Effect.provide(ProgramExecutorTest.layer({
          jobs: [failTimes("flaky", 3, runs)],
          config: { retrySchedule: Schedule.exponential("1 second") }
        })),
        Effect.scoped
      )
      expect(program.finishedAt).not.toBeNull()
      expect(yield* Ref.get(runs)).toBe(4)
      expect(yield* Ref.get(retries)).toEqual([1, 2, 4])
      // The program took exactly the sum of the delays, on the test clock.
      expect(program.finishedAt!.getTime() - program.createdAt.getTime()).toBe(7000)
    }))

  it.effect("the default schedule is exponential with jitter, each delay capped at 5 minutes", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const program = yield* ProgramExecutorTest.runProgram({ jobs: ["flaky"] }, { jobs: [failTimes("flaky", 12, runs)] })
      expect(program.finishedAt).not.toBeNull()
      const elapsed = program.finishedAt!.getTime() - program.createdAt.getTime()
      // 1+2+4+…+256 s (≈ 511 s) then 3 capped delays of 300 s: jitter keeps each within 80%–120%.
      const uncapped = [1, 2, 4, 8, 16, 32, 64, 128, 256].reduce((a, b) => a + b, 0)
      expect(elapsed).toBeGreaterThanOrEqual((uncapped * 0.8 + 3 * 240) * 1000)
      expect(elapsed).toBeLessThanOrEqual((uncapped * 1.2 + 3 * 300) * 1000)
    }))

  it.effect("maxAttempts: Infinity retries without limit (the old library's behaviour)", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const program = yield* ProgramExecutorTest.runProgram({ jobs: ["flaky"] }, {
        jobs: [failTimes("flaky", 60, runs)],
        config: { maxAttempts: Infinity, retrySchedule: Schedule.spaced("1 second") }
      })
      expect(program.finishedAt).not.toBeNull()
      expect(yield* Ref.get(runs)).toBe(61)
    }))

  it.effect("a retry schedule that ends makes the failure fatal", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const program = yield* ProgramExecutorTest.runProgram({ jobs: ["flaky"] }, {
        jobs: [failTimes("flaky", 10, runs)],
        config: { retrySchedule: Schedule.spaced("1 second").pipe(Schedule.intersect(Schedule.recurs(2))) }
      })
      expect(program.erroredAt).not.toBeNull()
      expect(program.errorMessage).toBe("retry schedule exhausted after 3 attempt(s): failure 3")
      expect(yield* Ref.get(runs)).toBe(3)
    }))

  it.effect("the heartbeat keeps a long job's lease: no other worker takes the step", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      const long = Job.make("long", Effect.zipRight(Ref.update(runs, (n) => n + 1), Effect.sleep("10 minutes")))
      const program = yield* ProgramExecutorTest.runProgram({ jobs: ["long"] }, {
        jobs: [long],
        workers: 3,
        config: { staleAfter: Duration.seconds(5), sweepInterval: Duration.seconds(5) }
      })
      expect(program.finishedAt).not.toBeNull()
      // The sweeper and two idle workers saw a 30 s lease held for 10 minutes, and left it alone.
      expect(yield* Ref.get(runs)).toBe(1)
    }))

  it.effect("a job past its timeout fails as retryable", () =>
    Effect.gen(function*() {
      const attempts = yield* Ref.make(0)
      const slowThenFast = Job.make(
        "slow",
        Effect.flatMap(Ref.updateAndGet(attempts, (n) => n + 1), (n) => n === 1 ? Effect.sleep("1 hour") : Effect.void),
        { timeout: "1 minute" }
      )
      const program = yield* ProgramExecutorTest.runProgram({ jobs: ["slow"] }, { jobs: [slowThenFast] })
      expect(program.finishedAt).not.toBeNull()
      expect(program.errorMessage).toBe("timed out after 1m")
      expect(yield* Ref.get(attempts)).toBe(2)
    }))

  it.effect("a wake-up lost after the program was stored is recovered by the sweeper", () =>
    Effect.gen(function*() {
      const runs = yield* Ref.make(0)
      // A queue whose publishes fail at first: createProgram still returns the runId, the row stays.
      const failures = yield* Ref.make(6)
      const flakyQueue = Layer.effect(
        ProgramQueue,
        Effect.map(ProgramQueue, (queue) => ({
          ...queue,
          publish: (message, options) =>
            Effect.flatMap(Ref.getAndUpdate(failures, (n) => n - 1), (left) =>
              left > 0 ? Effect.fail(new QueueError({ message: "broker unavailable" })) : queue.publish(message, options))
        }))
      ).pipe(Layer.provide(ProgramQueue.layerMemory))
      const program = yield* Effect.gen(function*() {
        // Forked: its publish retries wait on the test clock, which runUntilIdle moves.
        const creating = yield* Effect.fork(ProgramExecutor.createProgram({ jobs: ["once"] }))
        yield* Effect.yieldNow()
        const [program] = yield* ProgramExecutorTest.runUntilIdle()
        expect(yield* Fiber.join(creating)).toBe(program!.runId)
        return program!
      }).pipe(Effect.provide(ProgramExecutorTest.layer({
        jobs: [Job.make("once", Ref.update(runs, (n) => n + 1))],
        storage: Layer.merge(ProgramRepository.layerMemory, flakyQueue)
      })))
      expect(program.finishedAt).not.toBeNull()
      expect(yield* Ref.get(runs)).toBe(1)
    }))

  it.effect("lifecycle events come in order", () =>
    Effect.gen(function*() {
      const tags = yield* Effect.gen(function*() {
        const events = yield* ProgramEvents.subscribe
        const collected = yield* events.pipe(Stream.take(6), Stream.runCollect, Effect.fork)
        yield* ProgramExecutor.createProgram({ jobs: ["a", "b"] })
        yield* ProgramExecutorTest.runUntilIdle()
        return Chunk.toArray(yield* Fiber.join(collected)).map((event) => event._tag)
      }).pipe(
        Effect.provide(ProgramExecutorTest.layer({ jobs: [Job.make("a", Effect.void), Job.make("b", Effect.void)] })),
        Effect.scoped
      )
      expect(tags).toEqual([
        "ProgramCreated",
        "StepStarted",
        "StepFinished",
        "StepStarted",
        "StepFinished",
        "ProgramFinished"
      ])
    }))

  it.effect("with a tracer installed, each step runs in a span that is the parent of the job's spans", () =>
    Effect.gen(function*() {
      const spans: Array<Tracer.Span> = []
      const builtIn = yield* Effect.tracer
      // Any tracer but Effect's built-in one (which exports nothing) counts as installed.
      const recording = Tracer.make({
        span: (name, parent, context, links, startTime, kind, options) => {
          const span = builtIn.span(name, parent, context, links, startTime, kind, options)
          spans.push(span)
          return span
        },
        context: (f) => f()
      })
      const job = Job.make("a", Effect.withSpan(Effect.void, "inside the job"))
      yield* ProgramExecutor.createProgram({ jobs: ["a", "a"] }).pipe(
        Effect.zipRight(ProgramExecutorTest.runUntilIdle()),
        Effect.provide(ProgramExecutorTest.layer({ jobs: [job] })),
        Effect.scoped,
        Effect.withTracer(recording)
      )
      const steps = spans.filter((span) => span.name === "program-executor.step")
      expect(steps.map((span) => [span.attributes.get("step"), span.attributes.get("job")])).toEqual([[0, "a"], [1, "a"]])
      const inside = spans.filter((span) => span.name === "inside the job")
      expect(inside.map((span) => Option.getOrThrow(span.parent).spanId)).toEqual(steps.map((span) => span.spanId))
      expect(steps.every((span) => span.status._tag === "Ended")).toBe(true)
    }))

  it.effect("a job's own log lines carry its runId, step, job and attempt", () =>
    Effect.gen(function*() {
      const lines: Array<{ readonly message: unknown; readonly annotations: Record<string, unknown> }> = []
      const capture = Logger.make(({ annotations, message }) => {
        lines.push({ message, annotations: Object.fromEntries(HashMap.toEntries(annotations)) })
      })
      const counter = yield* Ref.make(0)
      const job = Job.make(
        "logs",
        Effect.zipRight(
          Effect.log("from the job"),
          Effect.flatMap(Ref.updateAndGet(counter, (n) => n + 1), (n) =>
            n === 1 ? Effect.fail(new RetryableError({ message: "once more" })) : Effect.void)
        )
      )
      const runId = yield* ProgramExecutor.createProgram({ jobs: ["logs", "logs"] }).pipe(
        Effect.tap(() => ProgramExecutorTest.runUntilIdle()),
        Effect.provide(ProgramExecutorTest.layer({ jobs: [job] })),
        Effect.scoped,
        Effect.provide(Logger.replace(Logger.defaultLogger, capture))
      )
      const fromJob = lines.filter((line) => JSON.stringify(line.message).includes("from the job"))
      expect(fromJob.map((line) => line.annotations)).toEqual([
        { runId, step: 0, job: "logs", attempt: 1 },
        { runId, step: 0, job: "logs", attempt: 2 },
        { runId, step: 1, job: "logs", attempt: 1 }
      ])
    }))

  it.effect("runUntilIdle reports programs that cannot finish", () =>
    Effect.gen(function*() {
      const error = yield* Effect.gen(function*() {
        const runId = yield* ProgramExecutor.createProgram({ jobs: ["stuck"] })
        const error = yield* Effect.flip(ProgramExecutorTest.runUntilIdle({ maxRounds: 20 }))
        return { runId, error }
      }).pipe(Effect.provide(ProgramExecutorTest.layer({ jobs: [Job.make("stuck", Effect.never)] })))
      expect(error.error._tag).toBe("ProgramsStuckError")
      expect(error.error._tag === "ProgramsStuckError" && error.error.runIds).toEqual([error.runId])
    }))

  it.effect("config is validated", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(Layer.build(ExecutorConfig.layer({
        heartbeatInterval: Duration.seconds(30),
        leaseDuration: Duration.seconds(10),
        concurrency: 0
      })).pipe(Effect.scoped))
      expect(String(error)).toMatch(/concurrency must be an integer >= 1.*heartbeatInterval must be shorter than leaseDuration/)
    }))
})
