/**
 * The executor publishes from uninterruptible bookkeeping (a completed step is always recorded). The queue's own
 * publish timeout must still end the wait there: with no broker, the caller gets a `QueueError`, not a hang.
 */
import { expect, it } from "@effect/vitest"
import { ProgramQueue } from "@program-executor/core"
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"
import { Effect, Layer } from "effect"

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
