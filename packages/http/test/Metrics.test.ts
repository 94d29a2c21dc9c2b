import { describe, expect, it } from "@effect/vitest"
import {
  Executor,
  ExecutorConfig,
  FatalError,
  Job,
  JobLibrary,
  ProgramRepository,
  RetryableError
} from "@program-executor/core"
import { Context, Duration, Effect, Layer, Logger, LogLevel, Ref, Schedule } from "effect"
import { makeCuttingProxy } from "../../sql/test/support/cuttingProxy.js"
import { execute } from "../../sql/test/utils.js"
import { serviceUrl } from "../../core/test/utils/services.js"
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"
import { SqlDatabase, SqlProgramRepository } from "@program-executor/sql"
import { ProgramExecutor, ProgramEvents } from "@program-executor/core"
import { Redacted } from "effect"
import { HttpServer } from "@effect/platform"
import { ProgramsHttp } from "../src/index.js"
import { call, startServer, targets, uniqueTable } from "./support.js"

/** Samples of a Prometheus text exposition: `name{labels}` → value. */
const parse = (text: string): Map<string, number> => {
  const samples = new Map<string, number>()
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue
    const space = line.lastIndexOf(" ")
    samples.set(line.slice(0, space), Number(line.slice(space + 1)))
  }
  return samples
}

const scrape = (base: string) =>
  Effect.map(call(base, "GET", "/metrics"), (reply) => {
    expect(reply.status).toBe(200)
    expect(reply.headers.get("content-type")).toContain("text/plain")
    return { samples: parse(reply.text), text: reply.text }
  })

const config: ExecutorConfig.ExecutorOptions = {
  ...ExecutorConfig.defaults(),
  workerId: "metrics-test",
  concurrency: 4,
  retrySchedule: Schedule.spaced("10 millis"),
  sweepInterval: Duration.seconds(1),
  staleAfter: Duration.seconds(2),
  shutdownGrace: Duration.seconds(2)
}

/** Polls until nothing is in progress, at most a minute. */
const awaitIdle = Effect.flatMap(ProgramRepository, (repository) => {
  const loop: Effect.Effect<void, unknown> = Effect.flatMap(
    repository.list({ inProgressOnly: true, limit: 1 }),
    (left) => left.length === 0 ? Effect.void : Effect.zipRight(Effect.sleep("50 millis"), loop)
  )
  return loop.pipe(Effect.timeoutFail({ duration: "60 seconds", onTimeout: () => new Error("programs still running") }))
})

const sqlTargets = targets().filter((target) => target.backend !== "mysql")

for (const target of sqlTargets) {
  describe(`/metrics on ${target.backend}`, () => {
    it.scopedLive("counts what a run did: created, finished, errored, steps, retries, job durations", () =>
      Effect.gen(function*() {
        const { context, server } = yield* startServer(target)
        const before = (yield* scrape(server.base)).samples
        const failedOnce = yield* Ref.make(false)
        const library = JobLibrary.layer(
          Job.make("ok", Effect.void),
          Job.make(
            "flaky",
            Effect.flatMap(Ref.getAndSet(failedOnce, true), (failed) =>
              failed ? Effect.void : Effect.fail(new RetryableError({ message: "once" })))
          ),
          Job.make("boom", Effect.fail(new FatalError({ message: "no" })))
        )
        const libraryContext = yield* Layer.build(library)
        yield* Effect.forkScoped(
          Executor.run.pipe(
            Effect.provideService(ExecutorConfig.ExecutorConfig, config),
            Effect.provide(Context.merge(context, libraryContext)),
            Logger.withMinimumLogLevel(LogLevel.None)
          )
        )
        for (const jobs of [["ok", "ok"], ["ok", "ok"], ["flaky", "ok"], ["boom"]]) {
          expect((yield* call(server.base, "POST", "/api/programs", { body: { jobs } })).status).toBe(201)
        }
        yield* Effect.provide(awaitIdle, context)

        const { samples: after, text } = yield* scrape(server.base)
        const delta = (name: string) => (after.get(name) ?? 0) - (before.get(name) ?? 0)
        expect(text).toContain("# TYPE program_executor_programs_created_total counter")
        expect(text).toContain("# TYPE program_executor_job_duration_seconds histogram")
        expect(delta("program_executor_programs_created_total")).toBe(4)
        expect(delta("program_executor_programs_finished_total")).toBe(3)
        expect(delta("program_executor_programs_errored_total")).toBe(1)
        expect(delta("program_executor_steps_completed_total")).toBe(6)
        expect(delta("program_executor_steps_retried_total")).toBe(1)
        // Every run of a job is timed: 6 completed, 1 retried, 1 fatal.
        expect(delta("program_executor_job_duration_seconds_count")).toBe(8)
        expect(delta("program_executor_job_duration_seconds_bucket{le=\"+Inf\"}")).toBe(8)
        expect(after.get("program_executor_programs{status=\"in_progress\"}")).toBe(0)
        expect(after.get("program_executor_programs{status=\"errored\"}")).toBe(1)
        expect(after.get("program_executor_oldest_due_step_age_seconds")).toBe(0)
      }))
  })
}

for (const target of targets()) {
  describe(`table gauges on ${target.backend}`, () => {
    it.scopedLive("programs in progress and errored, and the age of the oldest due step", () =>
      Effect.gen(function*() {
        const { server } = yield* startServer(target)
        const create = (body: unknown) =>
          Effect.map(call(server.base, "POST", "/api/programs", { body }), (reply) => reply.body.runId as string)
        yield* create({ jobs: ["a"], startAt: "2000-01-01T00:00:00Z" })
        yield* create({ jobs: ["a"], startAfter: "1 hour" })
        yield* create({ jobs: ["a"] })
        const cancelled = yield* create({ jobs: ["a"] })
        yield* call(server.base, "POST", `/api/programs/${cancelled}/cancel`, { body: {} })
        const { samples } = yield* scrape(server.base)
        expect(samples.get("program_executor_programs{status=\"in_progress\"}")).toBe(3)
        expect(samples.get("program_executor_programs{status=\"errored\"}")).toBe(1)
        // The oldest, due since 2000: more than 25 years (the one due now and the one due in an hour do not count).
        expect(samples.get("program_executor_oldest_due_step_age_seconds")).toBeGreaterThan(25 * 365 * 86400)
      }))
  })
}

describe("health", () => {
  it.scopedLive("/healthz answers while the process is up; /readyz checks the database", () =>
    Effect.gen(function*() {
      const { server } = yield* startServer(targets()[0]!)
      expect((yield* call(server.base, "GET", "/healthz")).body).toEqual({ status: "ok" })
      const ready = yield* call(server.base, "GET", "/readyz")
      expect(ready.status).toBe(200)
      expect(ready.body).toEqual({ status: "ready", database: "ok", broker: "ok" })
    }))

  const pg = serviceUrl("DATABASE_URL")
  if (pg !== undefined) {
    it.scopedLive("/readyz is 503 when the database cannot be reached, /healthz still 200", () =>
      Effect.gen(function*() {
        const proxy = yield* Effect.acquireRelease(Effect.promise(() => makeCuttingProxy(pg)), (proxy) =>
          Effect.promise(() => proxy.close()))
        const table = uniqueTable("http_ready")
        const services = ProgramExecutor.layer.pipe(
          Layer.provideMerge(
            SqlProgramRepository.layer({ tableName: table }).pipe(Layer.provide(SqlDatabase.layer(proxy.url)))
          ),
          Layer.provideMerge(AmqpProgramQueue.layer({ queueName: table }).pipe(
            Layer.provide(AmqpConnection.layer({ url: Redacted.make(serviceUrl("AMQP_URL") ?? "amqp://127.0.0.1:1") }))
          )),
          Layer.provideMerge(ProgramEvents.layer())
        )
        const context = yield* Layer.build(ProgramsHttp.serve({ port: 0 }).pipe(Layer.provideMerge(services)))
        const address = Context.get(context, HttpServer.HttpServer).address
        const base = `http://127.0.0.1:${(address as HttpServer.TcpAddress).port}`
        expect((yield* call(base, "GET", "/readyz")).body).toEqual({ status: "ready", database: "ok", broker: "ok" })
        yield* Effect.promise(() => proxy.close())
        const down = yield* call(base, "GET", "/readyz")
        expect(down.status).toBe(503)
        expect(down.body.status).toBe("unavailable")
        expect(down.body.database).toContain("unreachable")
        expect(down.body.broker).toBe("ok")
        expect((yield* call(base, "GET", "/healthz")).status).toBe(200)
        yield* execute("pg", pg)(table, `DROP TABLE IF EXISTS ${table}`)
      }).pipe(Logger.withMinimumLogLevel(LogLevel.None)))
  }
})

describe("/api/events", () => {
  it.scopedLive("streams the server's program events as server-sent events", () =>
    Effect.gen(function*() {
      const { server } = yield* startServer(targets()[0]!)
      const controller = new AbortController()
      yield* Effect.addFinalizer(() => Effect.sync(() => controller.abort()))
      const response = yield* Effect.promise(() => fetch(`${server.base}/api/events`, { signal: controller.signal }))
      expect(response.headers.get("content-type")).toContain("text/event-stream")
      const reader = response.body!.getReader()
      const decoder = new TextDecoder()
      let received = ""
      const readUntil = (text: string) =>
        Effect.promise(async () => {
          while (!received.includes(text)) {
            const { done, value } = await reader.read()
            if (done) throw new Error(`stream ended before ${text}`)
            received += decoder.decode(value, { stream: true })
          }
        }).pipe(Effect.timeoutFail({ duration: "20 seconds", onTimeout: () => new Error(`no ${text} in ${received}`) }))
      yield* readUntil(": subscribed")
      const { runId } = (yield* call(server.base, "POST", "/api/programs", { body: { jobs: ["a", "b"] } })).body
      yield* call(server.base, "POST", `/api/programs/${runId}/cancel`, { body: { reason: "seen" } })
      yield* readUntil("event: ProgramCancelled")
      expect(received).toContain(`event: ProgramCreated\ndata: {"runId":"${runId}","jobs":["a","b"],"_tag":"ProgramCreated"}`)
      expect(received).toContain(`"reason":"seen"`)
    }))
})
