/**
 * What every `ProgramQueue` must do, whatever carries the messages: a broker (deliveries with `claimed: None`) or a
 * queue that claims while it dequeues (the SQL queue, `claimed: Some(row)`, where a message exists only for a stored,
 * due program). So every test stores its programs through `ProgramRepository.insert` before publishing, and finishes
 * a delivery the way the executor does: claim it unless the queue already did, advance the program, then ack.
 *
 * Real clock, short delays; outcomes are awaited with bounds, and "nothing arrives" is checked with a short bound.
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Fiber, type Layer, Option, type Scope } from "effect"
import { type Delivery, ProgramQueue, ProgramRepository, type Subscription } from "@program-executor/core"
import { randomUUID } from "node:crypto"

const claimOptions = { owner: "conformance", leaseFor: Duration.minutes(1) }
/** A delivery expected now arrives within this. Generous: CI machines are shared and slow. */
const arrives = Duration.seconds(10)
/** How long "nothing more is delivered" is watched. */
const quiet = Duration.millis(400)

let counter = 0
/** A unique, identifier-safe name: lowercase letters, digits and underscores, starting with a letter. */
export const uniqueNamespace = (prefix = "pq") =>
  `${prefix}_${Date.now().toString(36)}_${(counter++).toString(36)}_${Math.random().toString(36).slice(2, 8)}`

const newPrograms = (count: number) =>
  Effect.gen(function*() {
    const repository = yield* ProgramRepository
    return yield* Effect.forEach(Array.from({ length: count }, () => randomUUID()), (runId) =>
      repository.insert({ runId, jobs: ["only"], programData: {}, jobData: {} }).pipe(Effect.as(runId)))
  })

const publishAll = (runIds: ReadonlyArray<string>) =>
  Effect.flatMap(ProgramQueue, (queue) =>
    Effect.forEach(runIds, (runId) => queue.publish({ runId, step: 0 }), { discard: true }))

const takeWithin = (subscription: Subscription, bound: Duration.DurationInput = arrives) =>
  subscription.take.pipe(
    Effect.timeoutFail({ duration: bound, onTimeout: () => new Error(`no delivery within ${Duration.format(bound)}`) })
  )

/** Nothing is delivered for `quiet`; a delivery that does arrive is given back and fails the test. */
const expectNothing = (subscription: Subscription) =>
  subscription.take.pipe(
    Effect.timeout(quiet),
    Effect.option,
    Effect.flatMap(Option.match({
      onNone: () => Effect.void,
      onSome: (delivery) =>
        Effect.zipRight(delivery.nack, Effect.die(new Error(`unexpected delivery of ${delivery.message.runId}`)))
    }))
  )

/** Finishes the delivered step as the executor does: claim unless the queue did, advance, ack. */
const complete = (delivery: Delivery) =>
  Effect.gen(function*() {
    const repository = yield* ProgramRepository
    const claimed = Option.isSome(delivery.claimed)
      ? delivery.claimed
      : yield* repository.claim(delivery.message, claimOptions)
    expect(Option.isSome(claimed), `claim of ${delivery.message.runId}`).toBe(true)
    const advanced = yield* repository.advance(
      { runId: delivery.message.runId, step: delivery.message.step, token: Option.getOrThrow(claimed).leaseToken! },
      { finished: true }
    )
    expect(advanced).toBe(true)
    yield* delivery.ack
  })

const subscribe = (prefetch: number) =>
  Effect.flatMap(ProgramQueue, (queue) => queue.subscribe({ prefetch, claim: claimOptions }))

const sorted = (values: Iterable<string>) => [...values].sort()

export const programQueueConformance = (
  name: string,
  makeLayer: (namespace: string) => Layer.Layer<ProgramQueue | ProgramRepository, unknown>
) => {
  const test = (
    title: string,
    body: () => Effect.Effect<void, unknown, ProgramQueue | ProgramRepository | Scope.Scope>
  ) =>
    it.live(title, () =>
      body().pipe(Effect.scoped, Effect.provide(makeLayer(uniqueNamespace())), Effect.timeout("50 seconds")), {
      timeout: 60_000
    })

  describe(`ProgramQueue conformance: ${name}`, () => {
    test("delivers a published wake-up", () =>
      Effect.gen(function*() {
        const [runId] = yield* newPrograms(1)
        yield* publishAll([runId!])
        const subscription = yield* subscribe(4)
        const delivery = yield* takeWithin(subscription)
        expect(delivery.message).toEqual({ runId, step: 0 })
        yield* complete(delivery)
        yield* expectNothing(subscription)
      }))

    test("delivers to a subscription that was waiting", () =>
      Effect.gen(function*() {
        const subscription = yield* subscribe(4)
        const waiting = yield* Effect.fork(takeWithin(subscription))
        const runIds = yield* newPrograms(1)
        yield* publishAll(runIds)
        const delivery = yield* Fiber.join(waiting)
        expect(delivery.message.runId).toBe(runIds[0])
        yield* complete(delivery)
      }))

    test("a delayed wake-up is not delivered before its delay", () =>
      Effect.gen(function*() {
        const repository = yield* ProgramRepository
        const queue = yield* ProgramQueue
        const delay = Duration.millis(300)
        const [runId] = yield* newPrograms(1)
        const subscription = yield* subscribe(4)
        // As the executor schedules a retry: record it (next_run_at), then publish with the delay.
        const claimed = yield* repository.claim({ runId: runId!, step: 0 }, claimOptions)
        expect(Option.isSome(claimed)).toBe(true)
        const lease = { runId: runId!, step: 0, token: Option.getOrThrow(claimed).leaseToken! }
        const startedAt = Date.now()
        expect(yield* repository.scheduleRetry(lease, { errorMessage: "later", delay, countAttempt: true })).toBe(true)
        yield* queue.publish({ runId: runId!, step: 0 }, { delay })
        const delivery = yield* takeWithin(subscription, Duration.sum(delay, arrives))
        const elapsed = Date.now() - startedAt
        expect(delivery.message).toEqual({ runId, step: 0 })
        // A few ms of slack for timers that round differently from Date.now().
        expect(elapsed).toBeGreaterThanOrEqual(Duration.toMillis(delay) - 5)
        yield* complete(delivery)
      }))

    test("a nacked delivery is delivered again", () =>
      Effect.gen(function*() {
        const runIds = yield* newPrograms(1)
        yield* publishAll(runIds)
        const subscription = yield* subscribe(1)
        const first = yield* takeWithin(subscription)
        yield* first.nack
        const second = yield* takeWithin(subscription)
        expect(second.message).toEqual(first.message)
        yield* complete(second)
        yield* expectNothing(subscription)
      }))

    test("unacked deliveries are delivered again once the subscription's scope closes", () =>
      Effect.gen(function*() {
        const runIds = yield* newPrograms(2)
        yield* publishAll(runIds)
        const firstRound = yield* Effect.scoped(Effect.gen(function*() {
          const subscription = yield* subscribe(2)
          const a = yield* takeWithin(subscription)
          const b = yield* takeWithin(subscription)
          return [a.message.runId, b.message.runId]
        }))
        expect(sorted(firstRound)).toEqual(sorted(runIds))
        const subscription = yield* subscribe(2)
        const again = [yield* takeWithin(subscription), yield* takeWithin(subscription)]
        expect(sorted(again.map((delivery) => delivery.message.runId))).toEqual(sorted(runIds))
        yield* Effect.forEach(again, complete, { discard: true })
      }))

    test("competing subscriptions share the work, each message to one of them", () =>
      Effect.gen(function*() {
        const a = yield* subscribe(2)
        const b = yield* subscribe(2)
        const runIds = yield* newPrograms(6)
        yield* publishAll(runIds)
        // Both hold their full prefetch at once, so they must hold different messages.
        const heldByA = [yield* takeWithin(a), yield* takeWithin(a)]
        const heldByB = [yield* takeWithin(b), yield* takeWithin(b)]
        const held = [...heldByA, ...heldByB].map((delivery) => delivery.message.runId)
        expect(new Set(held).size).toBe(4)
        yield* Effect.forEach([...heldByA, ...heldByB], complete, { discard: true })
        // The rest may go to either: both keep taking until every message was seen.
        const seen = [...held]
        const allSeen = yield* Deferred.make<void>()
        const drain = (subscription: Subscription) =>
          subscription.take.pipe(
            Effect.tap(complete),
            Effect.tap((delivery) => {
              seen.push(delivery.message.runId)
              return seen.length >= runIds.length ? Deferred.succeed(allSeen, undefined) : Effect.void
            }),
            Effect.forever
          )
        const drainers = yield* Effect.forkAll([drain(a), drain(b)])
        yield* Deferred.await(allSeen).pipe(Effect.timeoutFail({
          duration: arrives,
          onTimeout: () => new Error(`only ${seen.length} of ${runIds.length} messages were delivered`)
        }))
        yield* Fiber.interrupt(drainers)
        expect(sorted(seen)).toEqual(sorted(runIds))
        yield* expectNothing(a)
        yield* expectNothing(b)
      }))

    test("prefetch bounds the outstanding deliveries", () =>
      Effect.gen(function*() {
        const runIds = yield* newPrograms(3)
        yield* publishAll(runIds)
        const subscription = yield* subscribe(2)
        const first = yield* takeWithin(subscription)
        const second = yield* takeWithin(subscription)
        const third = yield* Effect.fork(subscription.take)
        yield* Effect.sleep(quiet)
        expect(Option.isNone(yield* Fiber.poll(third))).toBe(true)
        yield* complete(first)
        const delivered = yield* Fiber.join(third).pipe(Effect.timeoutFail({
          duration: arrives,
          onTimeout: () => new Error("the third delivery did not follow an ack")
        }))
        yield* complete(second)
        yield* complete(delivered)
        expect(sorted([first, second, delivered].map((delivery) => delivery.message.runId))).toEqual(sorted(runIds))
      }))

    test("stop ends new deliveries; outstanding ones can still be acked, the rest go to others", () =>
      Effect.gen(function*() {
        const runIds = yield* newPrograms(3)
        yield* publishAll(runIds)
        const stopping = yield* subscribe(3)
        const outstanding = yield* takeWithin(stopping)
        yield* stopping.stop
        yield* expectNothing(stopping)
        yield* complete(outstanding)
        const other = yield* subscribe(3)
        const rest = [yield* takeWithin(other), yield* takeWithin(other)]
        expect(sorted(rest.map((delivery) => delivery.message.runId))).toEqual(
          sorted(runIds.filter((runId) => runId !== outstanding.message.runId))
        )
        yield* Effect.forEach(rest, complete, { discard: true })
        yield* expectNothing(other)
      }))
  })
}
