/**
 * The broker closes our connection (as on a broker restart, without stopping the broker shared with other suites):
 * publishers and consumers carry on over a new connection, and deliveries of the old one are harmless to settle.
 */
import { expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Layer, Metric, Option, type Scope } from "effect"
import {
  Executor,
  ExecutorConfig,
  Job,
  JobContext,
  JobLibrary,
  ProgramExecutor,
  ProgramQueue,
  ProgramRepository
} from "@program-executor/core"
import { randomUUID } from "node:crypto"
import { AmqpConnection } from "@program-executor/amqp"
import { uniqueNamespace } from "../../core/test/conformance/ProgramQueueConformance.js"
import { describeWithService } from "../../core/test/utils/services.js"
import { brokerConnectionId, closeConnection, closeFromBroker, eventually, inspectQueue, rabbitLayer } from "./utils.js"

const claim = { owner: "test", leaseFor: Duration.minutes(1) }
const wakeUpsDropped = Metric.counter("program_executor_wakeups_dropped_total", { incremental: true })

describeWithService("AMQP_URL", "AMQP reconnect", (url) => {
  const withQueue = <A, E>(
    body: (queueName: string) => Effect.Effect<A, E, ProgramQueue | ProgramRepository | AmqpConnection.AmqpConnection | Scope.Scope>
  ) => {
    const queueName = uniqueNamespace("reconnect")
    return Effect.scoped(body(queueName)).pipe(Effect.provide(rabbitLayer(url, { queueName })))
  }

  it.live("publisher and consumer resume after the broker closes the connection; old deliveries settle harmlessly", () =>
    withQueue((queueName) =>
      Effect.gen(function*() {
        const queue = yield* ProgramQueue
        const subscription = yield* queue.subscribe({ prefetch: 4, claim })
        const first = { runId: randomUUID(), step: 0 }
        yield* queue.publish(first)
        const before = yield* subscription.take.pipe(Effect.timeout("10 seconds"))
        expect(before.message).toEqual(first)

        yield* closeFromBroker

        // The old channel is gone: acking its delivery does nothing and fails nothing; the broker redelivers it.
        yield* before.ack
        const second = { runId: randomUUID(), step: 1 }
        yield* queue.publish(second)
        const after = [
          yield* subscription.take.pipe(Effect.timeout("20 seconds")),
          yield* subscription.take.pipe(Effect.timeout("20 seconds"))
        ]
        expect(after.map((delivery) => delivery.message.runId).sort()).toEqual([first.runId, second.runId].sort())
        yield* Effect.forEach(after, (delivery) => delivery.ack, { discard: true })
        yield* subscription.stop
        expect((yield* inspectQueue(url, queueName)).messageCount).toBe(0)
      })))

  it.live("the executor keeps running programs while the broker closes its connection", () =>
    withQueue(() =>
      Effect.gen(function*() {
        const executions = new Map<string, number>()
        let waiting = 0
        // The first two second steps hold until their redelivered wake-ups were refused, so the close surely lands
        // mid-run, with deliveries of the old connection still in flight; the other slots stay free to take them.
        const held = 2
        const gate = yield* Deferred.make<void>()
        const job = (name: string) =>
          Job.make(name, Effect.gen(function*() {
            const ctx = yield* JobContext
            const key = `${ctx.runId}/${ctx.step}`
            executions.set(key, (executions.get(key) ?? 0) + 1)
            if (name === "second" && waiting < held) {
              waiting++
              yield* Deferred.await(gate)
            }
            yield* Effect.sleep("10 millis")
          }))
        const programs = 20
        const jobs = ["first", "second", "third"]
        const repository = yield* ProgramRepository
        const runIds = yield* Effect.scoped(Effect.gen(function*() {
          yield* Effect.forkScoped(Executor.run)
          const runIds = yield* Effect.forEach(
            Array.from({ length: programs }),
            () => ProgramExecutor.createProgram({ jobs }),
            { concurrency: 4 }
          )
          const pid = yield* brokerConnectionId
          yield* eventually("second steps are held", Effect.sync(() => waiting === held))
          const droppedBefore = (yield* Metric.value(wakeUpsDropped)).count
          yield* closeConnection(pid)
          // Their deliveries died unacknowledged with the old channel: the broker gives them to the new one while the
          // steps still run, and their claims must be refused (the lease is held), not run a second time.
          yield* eventually(
            "the redelivered wake-ups of the held steps were dropped",
            Effect.map(Metric.value(wakeUpsDropped), (state) => state.count - droppedBefore >= held)
          )
          yield* Deferred.succeed(gate, undefined)
          yield* eventually(
            "every program finished",
            repository.list({ inProgressOnly: true, limit: 1 }).pipe(Effect.map((left) => left.length === 0)),
            "60 seconds"
          )
          const connection = yield* AmqpConnection.AmqpConnection
          expect((yield* connection.connected).generation).toBe(2)
          return runIds
        }).pipe(Effect.provide(Layer.mergeAll(
          ProgramExecutor.layer,
          JobLibrary.layer(...jobs.map(job)),
          ExecutorConfig.layer({
            concurrency: 4,
            shutdownGrace: Duration.seconds(2),
            sweepInterval: Duration.millis(500),
            staleAfter: Duration.seconds(2)
          })
        ))))
        for (const runId of runIds) {
          const program = Option.getOrThrow(yield* repository.get(runId))
          expect(program.finishedAt).not.toBeNull()
          expect(program.erroredAt).toBeNull()
          for (let step = 0; step < jobs.length; step++) {
            expect(executions.get(`${runId}/${step}`) ?? 0, `${runId}/${step}`).toBe(1)
          }
        }
      })), { timeout: 120_000 })
})
