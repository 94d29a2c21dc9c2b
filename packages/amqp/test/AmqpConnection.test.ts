/**
 * The connection through a TCP proxy: a broker unreachable at start, and sockets cut without an AMQP close.
 */
import { expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Fiber, Layer, Logger, Schedule } from "effect"
import { ProgramQueue } from "@program-executor/core"
import { randomUUID } from "node:crypto"
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"
import { uniqueNamespace } from "../../core/test/conformance/ProgramQueueConformance.js"
import { describeWithService } from "../../core/test/utils/services.js"
import { deleteQueues, freePort, inspectQueue, makeProxy } from "./utils.js"

const claim = { owner: "test", leaseFor: Duration.minutes(1) }

describeWithService("AMQP_URL", "AmqpConnection", (url) => {
  const throughProxy = (port: number, queueName: string) =>
    AmqpProgramQueue.layer({ queueName, publishTimeout: "30 seconds" }).pipe(
      Layer.provideMerge(AmqpConnection.layer({
        url: url.replace(/:\d+(\/|$)/, `:${port}$1`),
        reconnectSchedule: Schedule.spaced("100 millis"),
        connectionName: `test proxy ${queueName}`
      }))
    )

  it.live("a broker unreachable at start is retried; a publish waiting meanwhile succeeds once it answers", () =>
    Effect.gen(function*() {
      const queueName = uniqueNamespace("conn")
      yield* Effect.addFinalizer(() => deleteQueues(url, [queueName]))
      const proxy = yield* makeProxy(url)
      const port = yield* freePort
      // Wait for proof that an attempt failed, rather than for some time.
      const failedOnce = yield* Deferred.make<void>()
      const watcher = Logger.make(({ message }) => {
        if (String(message).includes("cannot connect")) Deferred.unsafeDone(failedOnce, Effect.void)
      })
      const runId = randomUUID()
      const publishing = yield* Effect.fork(
        Effect.flatMap(ProgramQueue, (queue) => queue.publish({ runId, step: 0 })).pipe(
          Effect.provide(throughProxy(port, queueName)),
          Effect.provide(Logger.add(watcher))
        )
      )
      yield* Deferred.await(failedOnce).pipe(Effect.timeout("20 seconds"))
      yield* proxy.listen(port)
      yield* Fiber.join(publishing).pipe(Effect.timeout("30 seconds"))
      expect((yield* inspectQueue(url, queueName)).messageCount).toBe(1)
    }).pipe(Effect.scoped))

  it.live("sockets cut without a close: publisher and consumer carry on over a new connection", () =>
    Effect.gen(function*() {
      const queueName = uniqueNamespace("conn")
      yield* Effect.addFinalizer(() => deleteQueues(url, [queueName]))
      const proxy = yield* makeProxy(url)
      const port = yield* proxy.listen(0)
      yield* Effect.gen(function*() {
        const connection = yield* AmqpConnection.AmqpConnection
        const queue = yield* ProgramQueue
        const subscription = yield* queue.subscribe({ prefetch: 2, claim })
        const first = { runId: randomUUID(), step: 0 }
        yield* queue.publish(first)
        const before = yield* subscription.take.pipe(Effect.timeout("10 seconds"))
        expect((yield* connection.connected).generation).toBe(1)

        yield* proxy.drop
        yield* before.ack // the socket is gone: harmless, the broker redelivers it

        const second = { runId: randomUUID(), step: 1 }
        yield* queue.publish(second)
        expect((yield* connection.connected).generation).toBeGreaterThanOrEqual(2)
        const after = [
          yield* subscription.take.pipe(Effect.timeout("20 seconds")),
          yield* subscription.take.pipe(Effect.timeout("20 seconds"))
        ]
        expect(after.map((delivery) => delivery.message.runId).sort()).toEqual([first.runId, second.runId].sort())
        yield* Effect.forEach(after, (delivery) => delivery.ack, { discard: true })
      }).pipe(Effect.provide(throughProxy(port, queueName)))
    }).pipe(Effect.scoped))
})
