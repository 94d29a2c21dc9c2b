/**
 * An ambiguous write: the connection drops right after PostgreSQL committed the advance, before its reply. The
 * executor retries the advance, which is refused (the step moved); it must read the row back, see its own token on a
 * released lease, and carry on as if the first attempt had answered: one StepFinished event, the next step woken.
 * Without that, the program waits for the sweeper (here: never, within the test).
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import {
  Executor,
  ExecutorConfig,
  Job,
  JobLibrary,
  ProgramEvent,
  ProgramEvents,
  ProgramExecutor,
  ProgramQueue
} from "@program-executor/core"
import { Chunk, Duration, Effect, Fiber, Layer, Option, Ref, Schedule, Stream } from "effect"
import { describeWithService } from "../../core/test/utils/services.js"
import { SqlDatabase, SqlProgramRepository } from "../src/index.js"
import { makeCuttingProxy } from "./support/cuttingProxy.js"

describeWithService("DATABASE_URL", "PostgreSQL", (url) => {
  describe("a write whose connection dropped after it committed", () => {
    it.scopedLive("the advance is recognised as done by its token: the step finishes once and the next one runs", () =>
      Effect.gen(function*() {
        const tableName = `pe_ambiguous_${Date.now().toString(36)}`
        const workerId = `ambiguous-worker-${process.pid}`
        const proxy = yield* Effect.acquireRelease(
          Effect.promise(() => makeCuttingProxy(url)),
          (proxy) => Effect.promise(() => proxy.close())
        )
        const runs = yield* Ref.make<ReadonlyArray<string>>([])
        const job = (name: string) => Job.make(name, Ref.update(runs, (all) => [...all, name]))
        const queue = yield* Layer.build(ProgramQueue.layerMemory)
        const events = yield* Layer.build(ProgramEvents.layer())
        // The producer talks to PostgreSQL directly; the worker through the proxy, on the same table and queue.
        const direct = yield* Layer.build(
          SqlProgramRepository.layer({ tableName }).pipe(Layer.provideMerge(SqlDatabase.layer(url)))
        )
        yield* Effect.addFinalizer(() =>
          Effect.flatMap(SqlClient.SqlClient, (sql) => sql`DROP TABLE IF EXISTS ${sql(tableName)}`).pipe(
            Effect.provide(direct),
            Effect.ignore
          )
        )
        const worker = SqlProgramRepository.layer({ tableName }).pipe(Layer.provide(SqlDatabase.layer(proxy.url)))
        const executor = yield* ProgramExecutor.make.pipe(Effect.provide(direct), Effect.provide(queue))

        const subscription = yield* ProgramEvents.pipe(
          Effect.flatMap((hub) => hub.subscribe),
          Effect.provide(events)
        )
        const finished = yield* Stream.filter(subscription, ProgramEvent.$is("StepFinished")).pipe(
          Stream.take(2),
          Stream.runCollect,
          Effect.fork
        )
        const runId = yield* executor.createProgram({ jobs: ["first", "second"] })
        // The advance of step 0 names the program but not the worker; the claim names both.
        const cut = proxy.cutAfter((chunk) => chunk.includes(runId) && !chunk.includes(workerId))
        yield* Effect.forkScoped(
          Executor.run.pipe(
            Effect.provide(Layer.mergeAll(worker, JobLibrary.layer(job("first"), job("second")))),
            Effect.provide(queue),
            Effect.provide(events),
            Effect.provide(ExecutorConfig.layer({
              workerId,
              staleAfter: Duration.minutes(10),
              sweepInterval: Duration.minutes(10),
              recoveryInterval: Duration.minutes(10),
              storageRetry: Schedule.spaced("100 millis").pipe(Schedule.upTo("20 seconds"))
            }))
          )
        )
        yield* Effect.promise(() => cut).pipe(Effect.timeout("10 seconds"))
        const steps = yield* Fiber.join(finished).pipe(Effect.timeout("15 seconds"))
        expect(Chunk.toReadonlyArray(steps).map((event) => event.step)).toEqual([0, 1])
        const program = Option.getOrThrow(yield* executor.get(runId))
        expect(program.finishedAt).not.toBeNull()
        expect(yield* Ref.get(runs)).toEqual(["first", "second"])
        expect(proxy.cuts).toBe(1)
      }), { timeout: 60_000 })
  })
})
