/**
 * A bench process, forked by `bench/run.ts` and driven over IPC. One of three roles (`BENCH_ROLE`):
 * - `worker`: runs `Executor.run` with five no-op jobs;
 * - `creator`: only creates programs when told to (an application process beside the workers);
 * - `both`: a worker that also creates (the embedded mode: one process).
 * `BENCH_LONE=N` instead runs N programs one at a time (worker and creator in one process) and reports per-step
 * intervals measured from inside the jobs.
 *
 * Backends (`BENCH_BACKEND`): `embedded` (SQLite file `BENCH_SQLITE_FILE`, SQL queue), `pg-sql` (PostgreSQL, SQL
 * queue), `pg-amqp` (PostgreSQL + RabbitMQ queue `BENCH_QUEUE`). Table: `BENCH_TABLE`.
 *
 * Messages to the parent: `{ t: "ready" }`, `{ t: "created", count, millis }`, `{ t: "lone", ... }`,
 * `{ t: "marked" }` (answer to `{ t: "mark" }`: CPU is counted from then on),
 * `{ t: "stats", maxRssKb, cpuMillis }` (answer to `{ t: "stop" }`, sent just before exiting).
 */
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"
import {
  Executor,
  ExecutorConfig,
  Job,
  JobLibrary,
  ProgramEvents,
  ProgramExecutor,
  type ProgramQueue,
  type ProgramRepository
} from "@program-executor/core"
import { SqlDatabase, SqlProgramExecutor, SqlProgramRepository } from "@program-executor/sql"
import { Deferred, Duration, Effect, Fiber, Layer, Logger, LogLevel, Stream } from "effect"

type Backend = "embedded" | "pg-sql" | "pg-amqp"
type Role = "worker" | "creator" | "both"

const env = (name: string, fallback?: string): string => {
  const value = process.env[name] ?? fallback
  if (value === undefined) throw new Error(`bench worker: ${name} is not set`)
  return value
}

const backend = env("BENCH_BACKEND") as Backend
const role = env("BENCH_ROLE", "worker") as Role
const tableName = env("BENCH_TABLE")
const concurrency = Number(env("BENCH_CONCURRENCY", "16"))
const jobCount = Number(env("BENCH_JOBS", "5"))
const lone = Number(env("BENCH_LONE", "0"))
const jobNames = Array.from({ length: jobCount }, (_, i) => `noop_${i}`)

const send = (message: unknown) =>
  Effect.async<void>((resume) => {
    process.send!(message, undefined, {}, () => resume(Effect.void))
  })

/** CPU time (user + system) from ready to stop. */
let cpuMillis = 0

// Lone mode: when each job started (ms, monotonic), per program.
const jobStarts: Array<number> = []
const noop = (name: string) =>
  lone > 0 ? Job.make(name, Effect.sync(() => jobStarts.push(performance.now()))) : Job.make(name, Effect.void)

/** `BENCH_PG_POOL`: the PostgreSQL pool's size per process; unset: the default. */
const maxConnections = process.env.BENCH_PG_POOL === undefined ? {} : { maxConnections: Number(process.env.BENCH_PG_POOL) }

const storage = (): Layer.Layer<ProgramRepository | ProgramQueue | ProgramExecutor, unknown> => {
  switch (backend) {
    case "embedded":
      return SqlProgramExecutor.layerEmbedded({ filename: env("BENCH_SQLITE_FILE"), tableName })
    case "pg-sql":
      return SqlProgramExecutor.layer({ url: env("DATABASE_URL"), tableName, ...maxConnections })
    case "pg-amqp":
      return ProgramExecutor.layer.pipe(
        Layer.provideMerge(
          Layer.mergeAll(
            SqlProgramRepository.layer({ tableName }),
            AmqpProgramQueue.layer({ queueName: env("BENCH_QUEUE") })
          )
        ),
        Layer.provide(SqlDatabase.layer(env("DATABASE_URL"), maxConnections)),
        Layer.provide(AmqpConnection.layer({ url: env("AMQP_URL"), connectionName: `bench ${role} ${process.pid}` }))
      )
  }
}

/** `BENCH_MAX_CONSECUTIVE_STEPS`: the continuation cap (1 = one step per message); unset: the executor's default. */
const maxConsecutiveSteps = process.env.BENCH_MAX_CONSECUTIVE_STEPS

const config = ExecutorConfig.layer({
  concurrency,
  ...(maxConsecutiveSteps === undefined ? {} : { maxConsecutiveSteps: Number(maxConsecutiveSteps) }),
  workerId: `bench-${process.pid}`,
  // Nothing is lost in a bench: keep the sweeper out of the measurement.
  sweepInterval: Duration.minutes(10),
  shutdownGrace: Duration.seconds(5)
})

const stopRequested = Effect.async<void>((resume) => {
  const onMessage = (message: { t?: string }) => {
    if (message?.t === "stop") resume(Effect.void)
  }
  process.on("message", onMessage)
  return Effect.sync(() => process.off("message", onMessage))
})

/**
 * Creates `count` programs, `creationConcurrency` calls at a time: `createProgram` one by one when `chunk` is 1,
 * `createPrograms` of `chunk` programs each otherwise.
 */
const createPrograms = (count: number, creationConcurrency: number, chunk: number) =>
  Effect.gen(function*() {
    const executor = yield* ProgramExecutor
    const started = performance.now()
    const sizes = Array.from({ length: Math.ceil(count / chunk) }, (_, i) => Math.min(chunk, count - i * chunk))
    yield* Effect.forEach(
      sizes,
      (size): Effect.Effect<unknown> =>
        size === 1
          ? Effect.orDie(executor.createProgram({ jobs: jobNames }))
          : Effect.orDie(executor.createPrograms(Array.from({ length: size }, () => ({ jobs: jobNames })))),
      { concurrency: creationConcurrency, discard: true }
    )
    yield* send({ t: "created", count, millis: performance.now() - started })
  })

/**
 * Batch creation: `createPrograms` calls of `chunk` programs, one after another, until `seconds` have passed; reports
 * how many it created and how long that took.
 */
const createInBatches = (seconds: number, chunk: number) =>
  Effect.gen(function*() {
    const executor = yield* ProgramExecutor
    const inputs = Array.from({ length: chunk }, () => ({ jobs: jobNames }))
    const started = performance.now()
    let count = 0
    while (performance.now() - started < seconds * 1000) {
      count += (yield* Effect.orDie(executor.createPrograms(inputs))).length
    }
    yield* send({ t: "createdBatches", count, millis: performance.now() - started })
  })

/** Serves `create` requests from the parent until it asks to stop. */
const serveCreates = Effect.gen(function*() {
  type Request =
    | { readonly t: "create"; readonly count: number; readonly concurrency: number; readonly chunk: number }
    | { readonly t: "createBatches"; readonly seconds: number; readonly chunk: number }
  const requests = Stream.async<Request>((emit) => {
    const onMessage = (message: { t?: string }) => {
      if (message?.t === "create" || message?.t === "createBatches") void emit.single(message as Request)
    }
    process.on("message", onMessage)
    return Effect.sync(() => process.off("message", onMessage))
  })
  return yield* Stream.runForEach(requests, (request) =>
    request.t === "create"
      ? createPrograms(request.count, request.concurrency, request.chunk)
      : createInBatches(request.seconds, request.chunk))
})

/** One program at a time: create, wait for its `ProgramFinished`, next. */
const runLone = Effect.gen(function*() {
  const executor = yield* ProgramExecutor
  const events = yield* ProgramEvents.subscribe
  // A program may finish before its `createProgram` returns (RabbitMQ confirms the wake-up after the worker has run
  // every step back to back): each finished runId is kept, and the wait starts only for one not yet finished.
  const finished = new Set<string>()
  let waiting: { readonly runId: string; readonly done: Deferred.Deferred<void> } | undefined
  yield* events.pipe(
    Stream.runForEach((event) => {
      if (event._tag !== "ProgramFinished") return Effect.void
      finished.add(event.runId)
      return waiting !== undefined && waiting.runId === event.runId ? Deferred.succeed(waiting.done, undefined) : Effect.void
    }),
    Effect.forkScoped
  )
  const programs: Array<{ readonly starts: Array<number>; readonly totalMillis: number }> = []
  for (let i = 0; i < lone; i++) {
    jobStarts.length = 0
    const started = performance.now()
    const runId = yield* Effect.orDie(executor.createProgram({ jobs: jobNames }))
    if (!finished.has(runId)) {
      waiting = { runId, done: yield* Deferred.make<void>() }
      // Checked again: the event may have arrived while the wait was being set up.
      if (!finished.has(runId)) yield* Deferred.await(waiting.done)
    }
    finished.delete(runId)
    programs.push({ starts: jobStarts.map((t) => t - started), totalMillis: performance.now() - started })
  }
  yield* send({ t: "lone", programs })
})

const main = Effect.gen(function*() {
  if (lone > 0) {
    const worker = yield* Effect.forkScoped(Executor.run)
    yield* Effect.sleep("200 millis")
    yield* runLone
    yield* Fiber.interrupt(worker)
  } else {
    if (role !== "creator") yield* Effect.forkScoped(Executor.run)
    if (role !== "worker") yield* Effect.forkScoped(serveCreates)
    // Executor.run subscribes before it takes anything; give it a moment so the clock starts on a ready worker.
    yield* Effect.sleep("300 millis")
    let cpu = process.cpuUsage()
    // "mark": the warm-up is over; CPU is counted from here.
    const onMark = (message: { t?: string }) => {
      if (message?.t !== "mark") return
      cpu = process.cpuUsage()
      process.send!({ t: "marked" })
    }
    process.on("message", onMark)
    yield* send({ t: "ready" })
    yield* stopRequested
    const used = process.cpuUsage(cpu)
    cpuMillis = (used.user + used.system) / 1000
  }
}).pipe(
  Effect.scoped,
  Effect.provide(Layer.mergeAll(JobLibrary.layer(...jobNames.map(noop)), config)),
  Effect.provide(lone > 0 ? Layer.merge(storage(), ProgramEvents.layer()) : storage()),
  Logger.withMinimumLogLevel(LogLevel.Warning)
)

Effect.runPromise(main as Effect.Effect<void, unknown>).then(
  async () => {
    await new Promise<void>((resolve) =>
      process.send!({ t: "stats", maxRssKb: process.resourceUsage().maxRSS, cpuMillis }, undefined, {}, () => resolve())
    )
    process.exit(0)
  },
  (error) => {
    console.error("bench worker failed:", error)
    process.exit(1)
  }
)
