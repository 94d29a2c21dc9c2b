import type { ProgramQueue } from "@program-executor/core"
import { Effect } from "effect"

/** How a worker settled a delivered message. */
export interface Settlement {
  readonly runId: string
  readonly step: number
  readonly how: "ack" | "nack"
}

/** The queue with every ack and nack a worker sends recorded in `settled`, in order. */
export const recordingQueue = (queue: ProgramQueue["Type"], settled: Array<Settlement>): ProgramQueue["Type"] => ({
  ...queue,
  subscribe: (options) =>
    Effect.map(queue.subscribe(options), (subscription) => ({
      ...subscription,
      take: Effect.map(subscription.take, (delivery) => {
        const record = (how: Settlement["how"]) =>
          Effect.sync(() => settled.push({ runId: delivery.message.runId, step: delivery.message.step, how }))
        return {
          ...delivery,
          ack: Effect.zipRight(record("ack"), delivery.ack),
          nack: Effect.zipRight(record("nack"), delivery.nack)
        }
      })
    }))
})

/** The settlements of one program's messages. */
export const settlementsOf = (settled: ReadonlyArray<Settlement>, runId: string) =>
  settled.filter((settlement) => settlement.runId === runId)
