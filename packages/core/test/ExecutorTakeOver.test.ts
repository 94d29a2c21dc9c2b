/**
 * A handler whose job ignores its interruption is taken over (`takeOver`): what becomes of its step and its message
 * for each reason. Cancelled: the step released, the message acked. Shutdown: the step released, the message given
 * back (nacked), also when the handler is stuck before any job runs. The job left behind writes nothing. A shutdown
 * that meets the heartbeat's takeover of a lost lease leaves that slot alone. (A lease lost alone is in
 * ExecutorStorage.test.ts, on `TestClock`.) Memory storage, live clock, one slot unless said; each test was seen
 * failing with the mutant of `takeOver` it is named after (see docs/mutation-scores.md).
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
  ProgramQueue,
  ProgramRepository
} from "@program-executor/core"
import { Cause, Context, Deferred, Duration, Effect, Exit, Fiber, Layer, Logger, Option, Schedule, Scope } from "effect"
import { awaitProgram, fastConfig } from "./conformance/ExecutorConformance.js"
import { recordingQueue, type Settlement, settlementsOf } from "./utils/recordingQueue.js"

type Repository = ProgramRepository["Type"]
/**
 * Memory storage (the repository decorated, the queue recording), and one worker with one slot whose scope the body
 * may close (a shutdown). The worker stops before the storage closes.
 */
const withWorker = <A, E>(
  jobs: ReadonlyArray<Job.Job>,
  config: Partial<ExecutorConfig.ExecutorOptions>,
  body: (
    worker: Scope.CloseableScope,
    settled: ReadonlyArray<Settlement>
  ) => Effect.Effect<A, E, ProgramExecutor | ProgramRepository>,
  decorate: (repository: Repository) => Repository = (repository) => repository,
  /** Where the worker's log messages go, when given. */
  logs?: Array<string>
) =>
  Effect.gen(function*() {
    const settled: Array<Settlement> = []
    const storage = Layer.map(
      Layer.merge(ProgramRepository.layerMemory, ProgramQueue.layerMemory),
      (context) =>
        Context.add(
          Context.add(context, ProgramRepository, decorate(Context.get(context, ProgramRepository))),
          ProgramQueue,
          recordingQueue(Context.get(context, ProgramQueue), settled)
        )
    )
    const context = yield* Layer.build(Layer.mergeAll(storage, ProgramEvents.layer(), JobLibrary.layer(...jobs)))
    const worker = yield* Scope.make()
    yield* Effect.addFinalizer(() => Scope.close(worker, Exit.void))
    const logger = logs === undefined
      ? Layer.empty
      : Logger.replace(
        Logger.defaultLogger,
        Logger.make(({ message }) => {
          logs.push(Array.isArray(message) ? message.join(" ") : String(message))
        })
      )
    yield* Effect.forkIn(
      Executor.run.pipe(
        Effect.provide(context),
        Effect.provide(logger),
        Effect.provideService(ExecutorConfig.ExecutorConfig, {
          ...ExecutorConfig.defaults(),
          ...fastConfig,
          concurrency: 1,
          ...config,
          workerId: "worker-0"
        })
      ),
      worker
    )
    return yield* body(worker, settled).pipe(
      Effect.provideServiceEffect(ProgramExecutor, ProgramExecutor.make),
      Effect.provide(context)
    )
  }).pipe(Effect.scoped)

/**
 * A job that signals its start, ignores interruption until `release`, then writes its job data; `late` is how that
 * write ended (a write of a run that was taken over must be refused here, before it reaches the storage).
 */
const stubborn = Effect.gen(function*() {
  const started = yield* Deferred.make<void>()
  const gate = yield* Deferred.make<void>()
  const wrote = yield* Deferred.make<Exit.Exit<void, unknown>>()
  const job = Job.make(
    "stubborn",
    Effect.zipRight(
      Deferred.succeed(started, undefined),
      Effect.uninterruptible(
        Deferred.await(gate).pipe(
          Effect.zipRight(Effect.flatMap(JobContext, (ctx) => Effect.exit(ctx.jobData.set({ late: true })))),
          Effect.flatMap((exit) => Deferred.succeed(wrote, exit))
        )
      )
    )
  )
  return {
    job,
    started: Deferred.await(started).pipe(Effect.timeout("20 seconds")),
    release: Deferred.succeed(gate, undefined),
    late: Deferred.await(wrote).pipe(Effect.timeout("20 seconds"))
  }
})

/** The repository with its job-data writes counted. */
const countingWrites = (writes: { count: number }) => (repository: Repository): Repository => ({
  ...repository,
  writeJobData: (lease, jobName, value) =>
    Effect.suspend(() => {
      writes.count++
      return repository.writeJobData(lease, jobName, value)
    })
})

describe("executor takeover of a job that ignores its interruption", () => {
  it.scopedLive("cancelled: its step is released and its message acked before the job ends; its late write is refused here", () =>
    Effect.gen(function*() {
      const { job, late, release, started } = yield* stubborn
      const writes = { count: 0 }
      yield* withWorker([job, Job.make("quick", Effect.void)], {}, (_, settled) =>
        Effect.gen(function*() {
          const stuck = yield* ProgramExecutor.createProgram({ jobs: ["stubborn"] })
          yield* started
          yield* ProgramExecutor.cancel(stuck, "stop it")
          // One slot: `next` runs only once the takeover has freed it, after releasing the step and acking.
          const next = yield* ProgramExecutor.createProgram({ jobs: ["quick"] })
          expect((yield* awaitProgram(next, undefined, "10 seconds")).finishedAt).not.toBeNull()
          // Still running, so only the takeover can have released the lease (a cancel leaves a live lease alone).
          const cancelled = Option.getOrThrow(yield* ProgramExecutor.get(stuck))
          expect(cancelled).toMatchObject({ step: 0, lockedBy: null, errorMessage: "stop it" })
          expect(settlementsOf(settled, stuck)).toEqual([{ runId: stuck, step: 0, how: "ack" }])
          yield* release
          const write = yield* late
          expect(Exit.match(write, { onFailure: Cause.pretty, onSuccess: () => "stored" })).toMatch(/this run is over/)
          expect(writes.count).toBe(0)
          expect(settlementsOf(settled, stuck)).toEqual([{ runId: stuck, step: 0, how: "ack" }])
        }), countingWrites(writes)).pipe(Effect.ensuring(release))
    }))

  it.scopedLive("shutdown: its step is released and its message given back (nacked), and the shutdown ends", () =>
    Effect.gen(function*() {
      const { job, release, started } = yield* stubborn
      yield* withWorker([job], { shutdownGrace: Duration.millis(100) }, (worker, settled) =>
        Effect.gen(function*() {
          const runId = yield* ProgramExecutor.createProgram({ jobs: ["stubborn"] })
          yield* started
          const closed = yield* Scope.close(worker, Exit.void).pipe(Effect.timeout("5 seconds"), Effect.option)
          expect(Option.isSome(closed)).toBe(true)
          const given = Option.getOrThrow(yield* ProgramExecutor.get(runId))
          expect(given).toMatchObject({ step: 0, lockedBy: null, finishedAt: null, erroredAt: null })
          expect(settlementsOf(settled, runId)).toEqual([{ runId, step: 0, how: "nack" }])
        })).pipe(Effect.ensuring(release))
    }))

  it.scopedLive("shutdown of a handler stuck before its job (a claim that does not return): its message is given back", () =>
    Effect.gen(function*() {
      const claiming = yield* Deferred.make<void>()
      const gate = yield* Deferred.make<void>()
      // The first claim hangs (uninterruptibly, as the handler's bookkeeping is), then answers that nothing was
      // claimed.
      let claims = 0
      const hanging = (repository: Repository): Repository => ({
        ...repository,
        claim: (target, options) =>
          Effect.suspend(() =>
            claims++ === 0
              ? Deferred.succeed(claiming, undefined).pipe(
                Effect.zipRight(Deferred.await(gate)),
                Effect.as(Option.none())
              )
              : repository.claim(target, options)
          )
      })
      yield* withWorker([Job.make("quick", Effect.void)], { shutdownGrace: Duration.millis(100) }, (worker, settled) =>
        Effect.gen(function*() {
          const runId = yield* ProgramExecutor.createProgram({ jobs: ["quick"] })
          yield* Deferred.await(claiming).pipe(Effect.timeout("20 seconds"))
          const closed = yield* Scope.close(worker, Exit.void).pipe(Effect.timeout("5 seconds"), Effect.option)
          expect(Option.isSome(closed)).toBe(true)
          expect(settlementsOf(settled, runId)).toEqual([{ runId, step: 0, how: "nack" }])
        }), hanging).pipe(Effect.ensuring(Deferred.succeed(gate, undefined)))
    }))

  it.scopedLive("shutdown meeting a heartbeat takeover: a slot the heartbeat took over (lease lost) is not taken over again, its lease not released", () =>
    Effect.gen(function*() {
      // Two slots, both stuck in a job that ignores interruption. The shutdown takes them over one after the other;
      // the first one's release is held until the heartbeat has taken the second over as lost (acked, its lease left
      // to expire). The shutdown must then skip the second: releasing it would erase the lost run.
      const gate = yield* Deferred.make<void>()
      const running: Array<string> = []
      const job = Job.make(
        "stuck",
        Effect.flatMap(JobContext, (ctx) =>
          Effect.zipRight(
            Effect.sync(() => running.push(ctx.runId)),
            Effect.uninterruptible(Deferred.await(gate))
          ))
      )
      const releaseHeld = yield* Deferred.make<void>()
      const firstRelease = yield* Deferred.make<string>()
      const released: Array<string> = []
      let lost: string | undefined
      const racing = (repository: Repository): Repository => ({
        ...repository,
        extendLease: (lease, leaseFor) =>
          lease.runId === lost ? Effect.succeed("lost" as const) : repository.extendLease(lease, leaseFor),
        release: (lease) =>
          Effect.suspend(() => {
            released.push(lease.runId)
            return released.length === 1
              ? Deferred.succeed(firstRelease, lease.runId).pipe(
                Effect.zipRight(Deferred.await(releaseHeld)),
                Effect.zipRight(repository.release(lease))
              )
              : repository.release(lease)
          })
      })
      yield* withWorker(
        [job],
        { concurrency: 2, shutdownGrace: Duration.zero, heartbeatInterval: Duration.millis(50) },
        (worker, settled) =>
          Effect.gen(function*() {
            const programs = [
              yield* ProgramExecutor.createProgram({ jobs: ["stuck"] }),
              yield* ProgramExecutor.createProgram({ jobs: ["stuck"] })
            ]
            yield* Effect.repeat(Effect.sync(() => running.length), {
              until: (count) => count === 2,
              schedule: Schedule.spaced("10 millis")
            }).pipe(Effect.timeout("10 seconds"))
            const closing = yield* Effect.fork(Scope.close(worker, Exit.void))
            const first = yield* Deferred.await(firstRelease).pipe(Effect.timeout("10 seconds"))
            const second = programs.find((runId) => runId !== first)!
            lost = second
            // The heartbeat finds the second lease lost, interrupts its handler (ignored) and a heartbeat later takes
            // the slot over: acked, not released.
            yield* Effect.repeat(Effect.sync(() => settlementsOf(settled, second).length), {
              until: (count) => count > 0,
              schedule: Schedule.spaced("10 millis")
            }).pipe(Effect.timeout("10 seconds"))
            yield* Deferred.succeed(releaseHeld, undefined)
            const closed = yield* Fiber.join(closing).pipe(Effect.timeout("10 seconds"), Effect.option)
            expect(Option.isSome(closed)).toBe(true)
            expect(settlementsOf(settled, first)).toEqual([{ runId: first, step: 0, how: "nack" }])
            expect(settlementsOf(settled, second)).toEqual([{ runId: second, step: 0, how: "ack" }])
            expect(released).toEqual([first])
            // Still leased under the lost run's token: the next claim counts it as lost.
            expect(Option.getOrThrow(yield* ProgramExecutor.get(second)).lockedBy).toBe("worker-0")
          }),
        racing
      ).pipe(Effect.ensuring(Deferred.succeed(gate, undefined)), Effect.ensuring(Deferred.succeed(releaseHeld, undefined)))
    }))

  it.scopedLive("shutdown of a continued step that stops when interrupted: given back and woken at once, not taken over", () =>
    Effect.gen(function*() {
      const started = yield* Deferred.make<void>()
      const second = Job.make("second", Effect.zipRight(Deferred.succeed(started, undefined), Effect.never))
      const logs: Array<string> = []
      yield* withWorker(
        [Job.make("first", Effect.void), second],
        { shutdownGrace: Duration.millis(100) },
        (worker, settled) =>
          Effect.gen(function*() {
            const runId = yield* ProgramExecutor.createProgram({ jobs: ["first", "second"] })
            yield* Deferred.await(started).pipe(Effect.timeout("20 seconds"))
            const closed = yield* Scope.close(worker, Exit.void).pipe(Effect.timeout("5 seconds"), Effect.option)
            expect(Option.isSome(closed)).toBe(true)
            expect(Option.getOrThrow(yield* ProgramExecutor.get(runId))).toMatchObject({ step: 1, lockedBy: null })
            // The message that began the chain is acked; the continued step's wake-up was published before the
            // handler ended, so the shutdown had nothing to take over (its margin would have been waited for).
            expect(settlementsOf(settled, runId)).toEqual([{ runId, step: 0, how: "ack" }])
            expect(logs.filter((line) => line.includes("ignored its interruption"))).toEqual([])
          }),
        undefined,
        logs
      )
    }))
})
