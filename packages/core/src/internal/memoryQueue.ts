import * as Effect from "effect/Effect"
import * as FiberSet from "effect/FiberSet"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import type { WakeUp } from "../Program.js"
import type { Delivery, ProgramQueue } from "../ProgramQueue.js"

export const makeMemoryQueue = Effect.gen(function*() {
  const ready = yield* Queue.unbounded<WakeUp>()
  // Delayed messages wait in fibers of the layer's scope, so `TestClock` drives them.
  const delayed = yield* FiberSet.make()

  const service: ProgramQueue["Type"] = {
    publish: (message, options) =>
      options?.delay === undefined
        ? Queue.offer(ready, message)
        // Interruptible even when published from uninterruptible bookkeeping (a fork inherits that), so the
        // layer can close while a delay is pending.
        : FiberSet.run(delayed, Effect.interruptible(Effect.delay(Queue.offer(ready, message), options.delay))).pipe(
          Effect.asVoid
        ),

    subscribe: (options) =>
      Effect.gen(function*() {
        const permits = yield* Effect.makeSemaphore(options.prefetch)
        const outstanding = new Set<WakeUp>()
        let stopped = false

        // Like a broker on channel close: whatever was delivered and not acked goes back to the queue.
        yield* Effect.addFinalizer(() => Queue.offerAll(ready, outstanding))

        const settle = (message: WakeUp, requeue: boolean) =>
          Effect.suspend(() => {
            if (!outstanding.delete(message)) return Effect.void
            return Effect.zipRight(requeue ? Queue.offer(ready, message) : Effect.void, permits.release(1))
          })

        const take: Effect.Effect<Delivery> = Effect.suspend(() => stopped ? Effect.never : Effect.void).pipe(
          Effect.zipRight(permits.take(1)),
          Effect.zipRight(Effect.uninterruptibleMask((restore) =>
            restore(Queue.take(ready)).pipe(
              Effect.map((message): Delivery => {
                const own = { ...message }
                outstanding.add(own)
                return { message: own, claimed: Option.none(), ack: settle(own, false), nack: settle(own, true) }
              }),
              Effect.onInterrupt(() => permits.release(1))
            )
          ))
        )
        return {
          take,
          stop: Effect.sync(() => {
            stopped = true
          })
        }
      })
  }
  return service
})
