/**
 * Delayed start with RabbitMQ: the first wake-up goes through the delay queues (as a retry's does) and the step runs
 * once it is due, not before. The sweeper is held off for an hour, so only the delayed wake-up can start it.
 */
import { expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect, FiberId, Layer, Ref } from "effect"
import { Executor, ExecutorConfig, Job, JobContext, JobLibrary, ProgramExecutor } from "@program-executor/core"
import { AmqpProgramQueue } from "@program-executor/amqp"
import { uniqueNamespace } from "../../core/test/conformance/ProgramQueueConformance.js"
import { describeWithService } from "../../core/test/utils/services.js"
import { deleteQueues, inspectQueue, rabbitLayer } from "./utils.js"

describeWithService("AMQP_URL", "delayed start on RabbitMQ", (url) => {
  it.live("startAfter and startAt: the first step runs when due, through the delay queue, not before", () => {
    const queueName = uniqueNamespace("amqp")
    const ran = Ref.unsafeMake(new Map<string, number>())
    const both = Deferred.unsafeMake<void>(FiberId.none)
    const timed = Job.make(
      "timed",
      Effect.gen(function*() {
        const ctx = yield* JobContext
        const runs = yield* Ref.updateAndGet(ran, (map) => new Map(map).set(ctx.runId, Date.now()))
        if (runs.size === 2) yield* Deferred.succeed(both, undefined)
      })
    )
    return Effect.gen(function*() {
      yield* Effect.addFinalizer(() =>
        deleteQueues(url, [1000, 2000].map((ms) => AmqpProgramQueue.delayQueueName(queueName, ms)))
      )
      yield* Effect.forkScoped(Executor.run)
      const before = Date.now()
      const relative = yield* ProgramExecutor.createProgram({ jobs: ["timed"], startAfter: "1500 millis" })
      const startAt = new Date(before + 900)
      const [absolute] = yield* ProgramExecutor.createPrograms([{ jobs: ["timed"], startAt }])
      // The 2 s bucket holds the first wake-up now.
      expect((yield* inspectQueue(url, AmqpProgramQueue.delayQueueName(queueName, 2000))).messageCount).toBe(1)
      yield* Deferred.await(both).pipe(Effect.timeout("30 seconds"))
      const times = yield* Ref.get(ran)
      expect(times.get(relative)!).toBeGreaterThanOrEqual(before + 1500)
      expect(times.get(absolute!)!).toBeGreaterThanOrEqual(startAt.getTime())
    }).pipe(
      Effect.scoped,
      Effect.provide(Layer.mergeAll(
        ProgramExecutor.layer,
        JobLibrary.layer(timed),
        ExecutorConfig.layer({
          concurrency: 2,
          shutdownGrace: Duration.seconds(1),
          sweepInterval: Duration.hours(1),
          staleAfter: Duration.hours(1)
        })
      )),
      Effect.provide(rabbitLayer(url, { queueName }))
    )
  }, { timeout: 60_000 })
})
