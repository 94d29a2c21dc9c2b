/**
 * PostgreSQL stops under a running worker, and a worker starts while PostgreSQL is down. It stops the cluster named
 * by `PE_FAULT_PG_CLUSTER` (default `main`, the shared one at DATABASE_URL), so it belongs to the sequential fault
 * suite (`pnpm test:faults`), never beside the normal suite. PostgreSQL is always started again.
 */
import { describe, expect, it } from "@effect/vitest"
import {
  Executor,
  ExecutorConfig,
  Job,
  JobContext,
  JobLibrary,
  ProgramEvents,
  ProgramExecutor,
  ProgramRepository
} from "@program-executor/core"
import { SqlProgramExecutor } from "@program-executor/sql"
import { Duration, Effect, Fiber, Layer, Logger, LogLevel, Option, Schedule, Stream } from "effect"
import { execSync } from "node:child_process"
import { readdirSync } from "node:fs"
import { serviceUrl } from "../../packages/core/test/utils/services.js"

const cluster = process.env.PE_FAULT_PG_CLUSTER ?? "main"

const pgctl = (action: "start" | "stop", stdio: "inherit" | "ignore" = "inherit") => {
  const version = readdirSync("/etc/postgresql")[0]
  execSync(`pg_ctlcluster --skip-systemctl-redirect ${version} ${cluster} ${action}`, { stdio })
}
const ensureStarted = () => {
  try {
    pgctl("start", "ignore")
  } catch {
    // Already running: pg_ctlcluster refuses to start a running cluster.
  }
}

const config = (workerId: string): ExecutorConfig.ExecutorOptions => ({
  ...ExecutorConfig.defaults(),
  workerId,
  concurrency: 8,
  leaseDuration: Duration.seconds(5),
  heartbeatInterval: Duration.millis(500),
  retrySchedule: Schedule.spaced("100 millis"),
  sweepInterval: Duration.seconds(1),
  staleAfter: Duration.seconds(2),
  storageRetry: Schedule.exponential("100 millis").pipe(
    Schedule.modifyDelay((delay) => Duration.min(delay, Duration.seconds(2))),
    Schedule.upTo("2 minutes")
  )
})

const jobNames = ["one", "two", "three"]
const jobs = jobNames.map((name) =>
  Job.make(name, Effect.flatMap(JobContext, (ctx) => ctx.jobData.merge({ done: true })).pipe(Effect.delay("30 millis")))
)

const awaitIdle = (within: Duration.DurationInput) =>
  Effect.flatMap(ProgramRepository, (repository) => {
    const loop: Effect.Effect<void, unknown> = repository.list({ inProgressOnly: true, limit: 1 }).pipe(
      Effect.flatMap((left) => left.length === 0 ? Effect.void : Effect.zipRight(Effect.sleep("100 millis"), loop)),
      // The database may still be coming back.
      Effect.catchAll(() => Effect.zipRight(Effect.sleep("200 millis"), loop))
    )
    return loop.pipe(Effect.timeoutFail({ duration: within, onTimeout: () => new Error("programs still in progress") }))
  })

/** Counts StepFinished per step: an advance happens exactly when its update succeeded, so each must be 1. */
const countAdvances = Effect.gen(function*() {
  const events = yield* ProgramEvents
  const stream = yield* events.subscribe
  const counts = new Map<string, number>()
  yield* Effect.forkScoped(
    Stream.runForEach(stream, (event) =>
      Effect.sync(() => {
        if (event._tag === "StepFinished") {
          const key = `${event.runId}/${event.step}`
          counts.set(key, (counts.get(key) ?? 0) + 1)
        }
      }))
  )
  return counts
})

const url = serviceUrl("DATABASE_URL")
const quiet = Logger.minimumLogLevel(LogLevel.Error)

const suite = url !== undefined ? describe : describe.skip

suite("PostgreSQL restart", () => {
  const services = (tableName: string) =>
    Layer.mergeAll(
      SqlProgramExecutor.layer({ url: url!, tableName, pollInterval: "500 millis" }),
      JobLibrary.layer(...jobs)
    ).pipe(Layer.provideMerge(ProgramEvents.layer()))

  it.live("a running worker retries with backoff through a restart, and every program finishes once", () =>
    Effect.gen(function*() {
      const tableName = `fault_restart_${Date.now().toString(36)}`
      yield* Effect.gen(function*() {
        const advances = yield* countAdvances
        yield* Effect.forkScoped(Effect.provideService(Executor.run, ExecutorConfig.ExecutorConfig, config("w1")))
        const runIds = yield* Effect.forEach(
          Array.from({ length: 60 }),
          () => ProgramExecutor.createProgram({ jobs: jobNames }),
          { concurrency: 4 }
        )
        // Stop mid-run: once some steps have finished, but far from all.
        yield* Effect.repeat(Effect.sync(() => advances.size), {
          until: (finished) => finished >= 10,
          schedule: Schedule.spaced("20 millis")
        })
        // Counted once the server is down (not right after the loop above, which only just saw 10): steps were left
        // for the worker to finish through the restart. If everything had finished first, nothing here was tested.
        const finishedBeforeOutage = yield* Effect.acquireUseRelease(
          Effect.sync(() => {
            pgctl("stop")
            return advances.size
          }),
          (finished) => Effect.as(Effect.sleep("4 seconds"), finished), // the outage itself
          () => Effect.sync(ensureStarted)
        )
        expect(finishedBeforeOutage).toBeLessThan(runIds.length * jobNames.length)
        yield* awaitIdle("90 seconds")
        const repository = yield* ProgramRepository
        for (const runId of runIds) {
          const program = Option.getOrThrow(yield* repository.get(runId))
          expect(program.finishedAt, `${runId}: ${program.errorMessage}`).not.toBeNull()
          expect(program.jobData).toEqual({ one: { done: true }, two: { done: true }, three: { done: true } })
          for (const step of [0, 1, 2]) expect(advances.get(`${runId}/${step}`), `${runId}/${step}`).toBe(1)
        }
      }).pipe(Effect.scoped, Effect.provide(services(tableName)))
    }).pipe(Effect.ensuring(Effect.sync(ensureStarted)), Effect.provide(quiet)), { timeout: 180_000 })

  it.live("a worker started while PostgreSQL is down waits for it, then works", () =>
    Effect.gen(function*() {
      const tableName = `fault_down_${Date.now().toString(36)}`
      pgctl("stop")
      const started = yield* Effect.gen(function*() {
        yield* Effect.forkScoped(Effect.provideService(Executor.run, ExecutorConfig.ExecutorConfig, config("w2")))
        const runIds = yield* Effect.forEach([1, 2, 3, 4, 5], () => ProgramExecutor.createProgram({ jobs: jobNames }))
        yield* awaitIdle("60 seconds")
        return runIds
      }).pipe(Effect.scoped, Effect.provide(services(tableName)), Effect.fork)
      yield* Effect.sleep("3 seconds") // the outage itself
      ensureStarted()
      const runIds = yield* Fiber.join(started)
      const programs = yield* Effect.forEach(
        runIds,
        (runId) =>
          Effect.flatMap(ProgramRepository, (repository) => repository.get(runId)).pipe(Effect.map(Option.getOrThrow))
      ).pipe(Effect.provide(services(tableName)))
      for (const program of programs) expect(program.finishedAt).not.toBeNull()
    }).pipe(Effect.ensuring(Effect.sync(ensureStarted)), Effect.provide(quiet)), { timeout: 180_000 })
})
