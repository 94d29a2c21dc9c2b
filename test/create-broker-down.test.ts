/**
 * Invariant 0: a broker that does not answer never makes `createProgram` wait longer than one bounded publish
 * attempt (`ProgramExecutor.createPublishTimeout`, 2 s), though the AMQP adapter's own `publishTimeout` is 10 s. The
 * broker is a TCP proxy of this test that stops forwarding (the shared RabbitMQ is never stopped): the program's row
 * is committed, the call returns, and once the broker answers again the program runs.
 */
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"
import { expect, it } from "@effect/vitest"
import {
  Executor,
  ExecutorConfig,
  Job,
  JobLibrary,
  ProgramExecutor,
  ProgramRepository
} from "@program-executor/core"
import { Duration, Effect, Layer, Logger, LogLevel, Option, Schedule } from "effect"
import { deleteQueues, eventually, makeProxy } from "../packages/amqp/test/utils.js"
import { describeWithService } from "../packages/core/test/utils/services.js"
import { repository } from "../packages/sql/test/utils.js"

const workerConfig: ExecutorConfig.ExecutorOptions = {
  ...ExecutorConfig.defaults(),
  workerId: "broker-down-worker",
  concurrency: 2,
  retrySchedule: Schedule.spaced("10 millis"),
  sweepInterval: Duration.millis(500),
  staleAfter: Duration.seconds(1),
  shutdownGrace: Duration.millis(200)
}

describeWithService("DATABASE_URL", "PostgreSQL", (databaseUrl) => {
  describeWithService("AMQP_URL", "RabbitMQ", (amqpUrl) => {
    it.live("createProgram returns within one bounded publish attempt while the broker stalls; the program runs after", () =>
      Effect.gen(function*() {
        const namespace = `broker_down_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 6)}`
        const proxy = yield* makeProxy(amqpUrl)
        const port = yield* proxy.listen(0)
        const upstream = new URL(amqpUrl)
        const viaProxy = `amqp://${upstream.username}:${upstream.password}@127.0.0.1:${port}`
        yield* Effect.addFinalizer(() => deleteQueues(amqpUrl, [namespace]))
        const queue = AmqpProgramQueue.layer({ queueName: namespace }).pipe(
          Layer.provide(AmqpConnection.layer({ url: viaProxy, connectionName: `broker down ${namespace}` }))
        )
        const services = Layer.mergeAll(
          ProgramExecutor.layer.pipe(Layer.provideMerge(Layer.merge(repository("pg", databaseUrl)(namespace), queue))),
          JobLibrary.layer(Job.make("after_outage", Effect.void))
        )
        yield* Effect.gen(function*() {
          // Connected and consuming: a program created now runs.
          yield* Effect.forkScoped(Effect.provideService(Executor.run, ExecutorConfig.ExecutorConfig, workerConfig))
          const repositoryService = yield* ProgramRepository
          const finished = (runId: string) =>
            Effect.map(repositoryService.get(runId), (row) => Option.isSome(row) && row.value.finishedAt !== null)
          const before = yield* ProgramExecutor.createProgram({ jobs: ["after_outage"] })
          yield* eventually("the program created before the outage finished", finished(before))

          yield* proxy.stall
          const started = Date.now()
          const runId = yield* ProgramExecutor.createProgram({ jobs: ["after_outage"] })
          const took = Date.now() - started
          expect(took, `createProgram took ${took} ms`).toBeLessThan(
            Duration.toMillis(ProgramExecutor.createPublishTimeout) + 500
          )
          expect(Option.isSome(yield* repositoryService.get(runId))).toBe(true)

          yield* proxy.unstall
          yield* eventually("the program created during the outage finished", finished(runId), "20 seconds")
        }).pipe(Effect.provide(services))
      }).pipe(Effect.scoped, Logger.withMinimumLogLevel(LogLevel.None)), { timeout: 90_000 })
  })
})
