/** Lifecycle events of programs, published as they happen and readable as a `Stream`. */
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as PubSub from "effect/PubSub"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"

export type ProgramEvent = Data.TaggedEnum<{
  ProgramCreated: { readonly runId: string; readonly jobs: ReadonlyArray<string> }
  StepStarted: { readonly runId: string; readonly step: number; readonly job: string; readonly attempt: number }
  StepFinished: {
    readonly runId: string
    readonly step: number
    readonly job: string
    readonly attempt: number
    readonly duration: Duration.Duration
  }
  RetryScheduled: {
    readonly runId: string
    readonly step: number
    readonly job: string
    readonly attempt: number
    readonly delay: Duration.Duration
    readonly errorMessage: string
  }
  /** `ignorable` failures stop the program quietly; they are events all the same. */
  ProgramErrored: {
    readonly runId: string
    readonly step: number
    readonly job: string
    readonly errorMessage: string
    readonly ignorable: boolean
  }
  ProgramFinished: { readonly runId: string }
  ProgramCancelled: { readonly runId: string; readonly reason: string }
  ProgramResumed: { readonly runId: string; readonly step: number }
}>
export const ProgramEvent = Data.taggedEnum<ProgramEvent>()

export interface ProgramEventsService {
  readonly publish: (event: ProgramEvent) => Effect.Effect<void>
  /** Events from the moment the stream starts running. Each subscriber gets every event. */
  readonly stream: Stream.Stream<ProgramEvent>
  /** Subscribes now (not when the stream starts), so no event published after this returns is missed. */
  readonly subscribe: Effect.Effect<Stream.Stream<ProgramEvent>, never, Scope.Scope>
}

/** Without `layer` provided, events go nowhere: publishing costs nothing and the stream is empty. */
export class ProgramEvents extends Context.Reference<ProgramEvents>()("@program-executor/core/ProgramEvents", {
  defaultValue: (): ProgramEventsService => ({
    publish: () => Effect.void,
    stream: Stream.empty,
    subscribe: Effect.succeed(Stream.empty)
  })
}) {
  static readonly layer = (options?: { readonly capacity?: number }) => layer(options)
  static readonly stream = Stream.unwrap(Effect.map(this, (events) => events.stream))
  static readonly subscribe = Effect.flatMap(this, (events) => events.subscribe)
}

/**
 * An in-process hub. Events published with no subscriber are dropped, so an idle hub costs nothing; a subscriber
 * that falls more than `capacity` events behind loses the oldest (events are observability, never control).
 */
const layer = (options?: { readonly capacity?: number }): Layer.Layer<ProgramEvents> =>
  Layer.scoped(
    ProgramEvents,
    Effect.gen(function*() {
      const hub = yield* Effect.acquireRelease(PubSub.sliding<ProgramEvent>(options?.capacity ?? 4096), PubSub.shutdown)
      return {
        publish: (event) => PubSub.publish(hub, event).pipe(Effect.asVoid),
        stream: Stream.fromPubSub(hub),
        subscribe: Stream.fromPubSub(hub, { scoped: true })
      }
    })
  )

