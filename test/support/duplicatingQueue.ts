import { ProgramQueue } from "@program-executor/core"
import { Effect, Layer } from "effect"

/**
 * Every wake-up is published twice, each confirmed: the second stands for a broker redelivery, a racing sweeper or a
 * second publisher. The claim must make the copy harmless.
 */
export const duplicatingQueue: Layer.Layer<ProgramQueue, never, ProgramQueue> = Layer.effect(
  ProgramQueue,
  Effect.map(ProgramQueue, (queue) =>
    ProgramQueue.of({
      publish: (message, options) => Effect.zipRight(queue.publish(message, options), queue.publish(message, options)),
      subscribe: queue.subscribe
    }))
)
