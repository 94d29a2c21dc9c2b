/**
 * Carries wake-ups `{ runId, step }` to workers. A message only says "look at this step"; whether it runs is decided
 * by the repository's claim, so duplicates and stale messages are harmless and a lost message is recovered by the
 * executor's sweeper.
 */
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import type * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import { makeMemoryQueue } from "./internal/memoryQueue.js"
import type { ProgramRecord, WakeUp } from "./Program.js"
import type { ClaimOptions } from "./ProgramRepository.js"

export class QueueError extends Schema.TaggedError<QueueError>()("QueueError", {
  message: Schema.String,
  cause: Schema.optionalWith(Schema.Defect, { exact: true })
}) {}

export interface PublishOptions {
  /** Deliver no earlier than this (a delayed retry). Implementations may round it to a coarser bucket. */
  readonly delay?: Duration.DurationInput
}

export interface Delivery {
  readonly message: WakeUp
  /**
   * The program, already claimed for the worker, when the queue claims while it dequeues (the SQL queue, whose
   * queue is the programs table), no longer than a third of the lease ago (the executor counts the lease from
   * then). `None` for a broker: the executor claims the step itself.
   */
  readonly claimed: Option.Option<ProgramRecord>
  /** Done with the message: it will not be delivered again. */
  readonly ack: Effect.Effect<void>
  /** Give the message back for redelivery (an interrupted step). */
  readonly nack: Effect.Effect<void>
}

export interface SubscribeOptions {
  /** At most this many deliveries are outstanding (unacknowledged) at once. */
  readonly prefetch: number
  /** Used by queues that claim while they dequeue; ignored by brokers. */
  readonly claim: ClaimOptions
}

export interface Subscription {
  /**
   * The next delivery. Waits while none is available or `prefetch` deliveries are outstanding; never fails:
   * a broken transport is retried inside the implementation (with a Schedule, logged), so a worker outlives it.
   */
  readonly take: Effect.Effect<Delivery>
  /** Stops receiving: deliveries not yet taken are given back; outstanding ones can still be acked. */
  readonly stop: Effect.Effect<void>
}

export class ProgramQueue extends Context.Tag("@program-executor/core/ProgramQueue")<
  ProgramQueue,
  {
    /** Resolves once the message is durable (a broker's confirm), else fails with a `QueueError`. */
    readonly publish: (message: WakeUp, options?: PublishOptions) => Effect.Effect<void, QueueError>
    /** Competing consumers: each message goes to one subscription. Closing the scope gives back what is unacked. */
    readonly subscribe: (options: SubscribeOptions) => Effect.Effect<Subscription, QueueError, Scope.Scope>
    /**
     * Succeeds when the broker answers now (readiness checks). Absent where there is nothing apart from the database
     * to reach (the SQL queue, the memory queue).
     */
    readonly ping?: Effect.Effect<void, QueueError>
  }
>() {
  /** An in-process queue with the delivery semantics of a broker (redelivery of unacked messages, delays). */
  static readonly layerMemory: Layer.Layer<ProgramQueue> = Layer.scoped(this, makeMemoryQueue)
}
