/**
 * The executor publishes from uninterruptible bookkeeping (a completed step is always recorded). The queue's own
 * publish timeout must still end the wait there: with no broker, the caller gets a `QueueError`, not a hang.
 */
import { expect, it } from "@effect/vitest"
import { ProgramQueue } from "@program-executor/core"
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"
import { Effect, Layer } from "effect"
import { execFile } from "node:child_process"
import { promisify } from "node:util"
import { uniqueNamespace } from "../../core/test/conformance/ProgramQueueConformance.js"
import { describeWithService } from "../../core/test/utils/services.js"
import { deleteQueues, eventually, makeProxy } from "./utils.js"

// Nothing listens on port 1: every connection attempt is refused at once.
const unreachable = AmqpProgramQueue.layer({ queueName: "unreachable", publishTimeout: "300 millis" }).pipe(
  Layer.provide(AmqpConnection.layer({ url: "amqp://guest:guest@127.0.0.1:1" }))
)

it.scopedLive("a publish from an uninterruptible region fails with a QueueError after publishTimeout", () =>
  Effect.gen(function*() {
    const queue = yield* ProgramQueue
    const error = yield* Effect.uninterruptible(queue.publish({ runId: "r", step: 0 })).pipe(
      Effect.flip,
      Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => new Error("publish hung past its timeout") })
    )
    expect(error._tag).toBe("QueueError")
    expect(error.message).toMatch(/not confirmed within/)
    expect(error.message).not.toMatch(/guest:guest/)
  }).pipe(Effect.provide(unreachable)))

const rabbitmqctl = (...args: Array<string>) =>
  Effect.promise(() => promisify(execFile)("rabbitmqctl", ["-q", ...args])).pipe(Effect.asVoid)

describeWithService("AMQP_URL", "publish outcomes on a live broker", (url) => {
  it.scopedLive("a confirm that never comes (the broker stalls, the connection stays) fails after publishTimeout", () =>
    Effect.gen(function*() {
      const queueName = uniqueNamespace("amqp")
      yield* Effect.addFinalizer(() => deleteQueues(url, [queueName]))
      const proxy = yield* makeProxy(url)
      const port = yield* proxy.listen(0)
      const target = new URL(url)
      target.host = `127.0.0.1:${port}`
      yield* Effect.gen(function*() {
        const queue = yield* ProgramQueue
        // The channel is open and the queue declared: the next publish takes the common path.
        yield* queue.publish({ runId: "r", step: 0 })
        yield* proxy.stall
        const started = Date.now()
        const error = yield* Effect.uninterruptible(queue.publish({ runId: "r", step: 1 })).pipe(
          Effect.flip,
          Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => new Error("publish hung past its timeout") })
        )
        expect(error._tag).toBe("QueueError")
        expect(error.message).toMatch(/not confirmed within 500ms/)
        expect(Date.now() - started).toBeGreaterThanOrEqual(450)
        yield* proxy.unstall
      }).pipe(
        Effect.provide(
          AmqpProgramQueue.layer({ queueName, publishTimeout: "500 millis" }).pipe(
            Layer.provide(AmqpConnection.layer({ url: target.toString(), connectionName: `test ${queueName}` }))
          )
        )
      )
    }))

  it.scopedLive("a message the broker refuses (nack) fails at once: it is not sent again until publishTimeout", () =>
    Effect.gen(function*() {
      const queueName = uniqueNamespace("amqp")
      yield* Effect.addFinalizer(() => deleteQueues(url, [queueName]))
      // A queue that takes nothing and says so: every publish to it is nacked.
      yield* Effect.acquireRelease(
        rabbitmqctl(
          "set_policy",
          queueName,
          `^${queueName}$`,
          JSON.stringify({ "max-length": 0, "overflow": "reject-publish" }),
          "--apply-to",
          "queues"
        ),
        () => rabbitmqctl("clear_policy", queueName).pipe(Effect.ignore)
      )
      yield* Effect.gen(function*() {
        const queue = yield* ProgramQueue
        const refused = queue.publish({ runId: "r", step: 0 }).pipe(
          Effect.flip,
          Effect.map((error) => /nack/.test(error.message))
        )
        // The policy reaches the queue shortly after it is set.
        yield* eventually("the broker nacks", refused)
        const started = Date.now()
        const error = yield* Effect.flip(queue.publish({ runId: "r", step: 1 }))
        expect(error._tag).toBe("QueueError")
        expect(error.message).toMatch(/refused the message \(nack\)/)
        expect(Date.now() - started).toBeLessThan(5_000)
      }).pipe(
        Effect.provide(
          AmqpProgramQueue.layer({ queueName, publishTimeout: "30 seconds" }).pipe(
            Layer.provide(AmqpConnection.layer({ url, connectionName: `test ${queueName}` }))
          )
        )
      )
    }), { timeout: 60_000 })
})
