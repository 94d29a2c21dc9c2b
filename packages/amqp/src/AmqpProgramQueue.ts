/**
 * `ProgramQueue` on RabbitMQ.
 *
 * Topology (declared whenever a channel opens, so a broker that lost it gets it back):
 * - `<queueName>`: durable; messages are persistent JSON wake-ups `{ runId, step }`.
 * - `<queueName>.delay.<ms>`: one durable queue per delay bucket, with a message TTL of `<ms>`, dead-lettering
 *   back to `<queueName>` through the default exchange and deleted by the broker when idle (`x-expires`).
 *
 * Publishing goes through one long-lived confirm channel and resolves only on the broker's confirm. Messages are
 * `mandatory`: one the broker could not route (its queue was deleted) is returned, the queue declared again and the
 * message sent again. A publish caught by a dropped connection is sent again on the next connection until
 * `publishTimeout`, then fails with a `QueueError`: never silently dropped. Each subscription has its own channel with `prefetch` as its QoS; after a reconnect it consumes
 * again, and deliveries of the lost channel become inert: their ack/nack do nothing, the broker redelivers them.
 * Malformed messages (not JSON, not a wake-up, too large) are acked, logged once with a truncated body and counted
 * in `poisonMessages`.
 */
import type * as amqp from "amqplib"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Queue from "effect/Queue"
import * as Schema from "effect/Schema"
import { Program, ProgramQueue, QueueError } from "@program-executor/core"
import type { Delivery, Subscription } from "@program-executor/core"
import { AmqpConnection, AmqpError, defaultReconnectSchedule } from "./AmqpConnection.js"
import { delayBucket, delayQueueExpiry } from "./internal/delayBuckets.js"

export interface AmqpProgramQueueOptions {
  /** The main queue; delay queues are named after it. Default `program-executor`. */
  readonly queueName?: string
  /** A publish unconfirmed after this long (broker down, connection blocked) fails with `QueueError`. Default 10s. */
  readonly publishTimeout?: Duration.DurationInput
  /** A larger message body is poison: acked, logged, counted. Default 64 KiB (a wake-up is under 100 bytes). */
  readonly maxMessageBytes?: number
  /** How long a poison message's body may be in the log. Default 200 characters. */
  readonly logBodyChars?: number
}

export const defaultQueueName = "program-executor"

/** Malformed messages acked and dropped, tagged with `queue`. */
export const poisonMessages = Metric.counter("program_executor_amqp_poison_messages_total", {
  description: "malformed AMQP messages acknowledged and dropped",
  incremental: true
})

/** The name of the delay queue carrying messages delayed by `bucket` ms. */
export const delayQueueName = (queueName: string, bucket: number) => `${queueName}.delay.${bucket}`

const decodeWakeUp = Schema.decodeUnknownEither(Schema.parseJson(Program.WakeUp))

const errorMessage = (error: unknown) => error instanceof Error ? error.message : String(error)

/** Why a body is not a wake-up, in one short line (the path and message, never the whole body). */
const describeParseError = (error: ParseResult.ParseError): string => {
  const [first] = ParseResult.ArrayFormatter.formatErrorSync(error)
  const text = first === undefined
    ? "not a wake-up"
    : first.path.length === 0
    ? first.message
    : `${first.path.join(".")}: ${first.message}`
  return text.length > 200 ? `${text.slice(0, 200)}…` : text
}

/** Broker refusals (a nack) are final; a closed channel or connection is worth another try on a new one. */
class Refused extends Schema.TaggedError<Refused>()("Refused", { message: Schema.String }) {}

/** A channel and whether it is still open; deliveries of a closed channel can no longer be settled. */
interface OpenChannel<C extends amqp.Channel> {
  readonly channel: C
  open: boolean
}

const track = <C extends amqp.Channel>(channel: C): OpenChannel<C> => {
  const tracked: OpenChannel<C> = { channel, open: true }
  channel.on("close", () => {
    tracked.open = false
  })
  return tracked
}

const call = <A>(what: string, run: () => PromiseLike<A>) =>
  Effect.tryPromise({ try: run, catch: (error) => new AmqpError({ message: `${what}: ${errorMessage(error)}` }) })

const closeChannel = (tracked: OpenChannel<amqp.Channel>) =>
  Effect.suspend(() =>
    tracked.open
      ? call("closing a channel", () => tracked.channel.close()).pipe(
        Effect.interruptible,
        Effect.timeout("5 seconds"),
        Effect.ignore
      )
      : Effect.void
  )

export const make = (options: AmqpProgramQueueOptions = {}) =>
  Effect.gen(function*() {
    const connection = yield* AmqpConnection
    const queueName = options.queueName ?? defaultQueueName
    const publishTimeout = Duration.decode(options.publishTimeout ?? "10 seconds")
    const maxMessageBytes = options.maxMessageBytes ?? 64 * 1024
    const logBodyChars = options.logBodyChars ?? 200
    const poisonCounter = Metric.tagged(poisonMessages, "queue", queueName)
    const mainQueueOptions: amqp.Options.AssertQueue = { durable: true }

    // --- publishing ----------------------------------------------------------------------------------------------

    /** The confirm channel and whether the main queue must be declared (again) before the next publish. */
    interface Publisher {
      readonly tracked: OpenChannel<amqp.ConfirmChannel>
      /** `messageId`s the broker returned as unroutable (mandatory): their confirm means "dropped", not "stored". */
      readonly returned: Set<string>
      declared: boolean
    }
    let publisher: Publisher | undefined
    let nextMessageId = 0
    const publisherLock = yield* Effect.makeSemaphore(1)

    /** The shared confirm channel, opened when there is none or it closed; the main queue declared when needed. */
    const publisherChannel = publisherLock.withPermits(1)(Effect.gen(function*() {
      if (publisher === undefined || !publisher.tracked.open) {
        const tracked = track(yield* connection.createConfirmChannel)
        const opened: Publisher = { tracked, returned: new Set(), declared: false }
        tracked.channel.on("return", (message: amqp.Message) => {
          // A queue deleted under us (or lost by the broker): declare it again before the retry.
          if (typeof message.properties.messageId === "string") opened.returned.add(message.properties.messageId)
          opened.declared = false
        })
        publisher = opened
      }
      const current = publisher
      if (!current.declared) {
        yield* call(`declaring queue ${queueName}`, () =>
          current.tracked.channel.assertQueue(queueName, mainQueueOptions))
        current.declared = true
      }
      return current
    }))
    yield* Effect.addFinalizer(() => publisher === undefined ? Effect.void : closeChannel(publisher.tracked))
    // Topology on start when the broker is there; when it is not, the first channel opened later declares it.
    yield* publisherChannel.pipe(
      Effect.timeoutFail({
        duration: publishTimeout,
        onTimeout: () => new AmqpError({ message: `no connection within ${Duration.format(publishTimeout)}` })
      }),
      Effect.catchAll((error) =>
        Effect.logWarning(`queue ${queueName} not declared at start (${error.message}); it will be on connection`)
      )
    )

    /** Declares the bucket's queue before each use: that renews its `x-expires` lease and recreates an expired one. */
    const declareDelayQueue = (channel: amqp.Channel, bucket: number) =>
      call(`declaring queue ${delayQueueName(queueName, bucket)}`, () =>
        channel.assertQueue(delayQueueName(queueName, bucket), {
          durable: true,
          arguments: {
            "x-message-ttl": bucket,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queueName,
            "x-expires": delayQueueExpiry(bucket)
          }
        }))

    const publishOnce = (body: Buffer, bucket: number) =>
      Effect.gen(function*() {
        const { returned, tracked: { channel } } = yield* publisherChannel
        const routingKey = bucket === 0 ? queueName : delayQueueName(queueName, bucket)
        if (bucket > 0) yield* declareDelayQueue(channel, bucket)
        const messageId = String(++nextMessageId)
        const properties = { persistent: true, mandatory: true, contentType: "application/json", messageId }
        yield* Effect.async<void, AmqpError | Refused>((resume) => {
          try {
            channel.publish("", routingKey, body, properties, (error) => {
              if (returned.delete(messageId)) {
                resume(Effect.fail(new AmqpError({ message: `queue ${routingKey} missing: message returned` })))
              } else if (error === null || error === undefined) resume(Effect.void)
              else if (error.message === "message nacked") {
                resume(Effect.fail(new Refused({ message: "the broker refused the message (nack)" })))
              } else resume(Effect.fail(new AmqpError({ message: `publish not confirmed: ${errorMessage(error)}` })))
            })
          } catch (error) {
            resume(Effect.fail(new AmqpError({ message: `publish failed: ${errorMessage(error)}` })))
          }
        })
      })

    const publish: ProgramQueue["Type"]["publish"] = (message, publishOptions) =>
      Effect.suspend(() => {
        const body = Buffer.from(JSON.stringify({ runId: message.runId, step: message.step }))
        const bucket = publishOptions?.delay === undefined
          ? 0
          : delayBucket(Duration.toMillis(Duration.decode(publishOptions.delay)))
        let lastError = "no connection to the broker"
        return publishOnce(body, bucket).pipe(
          Effect.tapError((error) =>
            Effect.sync(() => {
              lastError = error.message
            })
          ),
          Effect.retry({
            schedule: defaultReconnectSchedule,
            while: (error) => error._tag === "AmqpError"
          }),
          // The executor publishes from uninterruptible bookkeeping; a timeout can only end an interruptible effect.
          Effect.interruptible,
          Effect.timeoutFail({
            duration: publishTimeout,
            onTimeout: () =>
              new AmqpError({
                message: `publish not confirmed within ${Duration.format(publishTimeout)} (last: ${lastError})`
              })
          }),
          Effect.mapError((error) =>
            new QueueError({
              message: `publishing to ${queueName} on ${connection.endpoint}: ${error.message}`,
              cause: error
            })
          )
        )
      })

    // --- consuming -----------------------------------------------------------------------------------------------

    const subscribe: ProgramQueue["Type"]["subscribe"] = (subscribeOptions) =>
      Effect.gen(function*() {
        interface Received {
          readonly message: amqp.ConsumeMessage
          readonly from: OpenChannel<amqp.Channel>
        }
        const received = yield* Queue.unbounded<Received>()
        const started = yield* Deferred.make<void>()
        let stopped = false
        let current: { readonly tracked: OpenChannel<amqp.Channel>; readonly consumerTag: string } | undefined

        const settle = (item: Received, how: (channel: amqp.Channel) => void) => {
          // A channel that closed took its deliveries with it: the broker redelivers them.
          if (!item.from.open) return
          try {
            how(item.from.channel)
          } catch {
            // Closed between the check and the call: same as above.
          }
        }

        /** Cancels the consumer (basic.cancel) but keeps the channel, then gives back what was not taken. */
        const cancelConsumer = Effect.suspend(() => {
          const consumer = current
          return (consumer !== undefined && consumer.tracked.open
            ? call("cancelling the consumer", () => consumer.tracked.channel.cancel(consumer.consumerTag)).pipe(
              Effect.interruptible,
              Effect.timeout("5 seconds"),
              Effect.ignore
            )
            : Effect.void).pipe(
              Effect.zipRight(Queue.takeAll(received)),
              Effect.flatMap((pending) => {
                for (const item of pending) settle(item, (channel) => channel.nack(item.message, false, true))
                return Effect.logInfo(`consumer cancelled; ${pending.length} message(s) not yet taken given back`)
              })
            )
        })

        /** One channel's life: consume until it closes. Fails if it could not start. */
        const consumeOnce = Effect.acquireUseRelease(
          Effect.interruptible(connection.createChannel).pipe(Effect.map(track)),
          (tracked) =>
            Effect.gen(function*() {
              const closed = yield* Deferred.make<void>()
              tracked.channel.on("close", () => Deferred.unsafeDone(closed, Exit.void))
              yield* call("setting prefetch", () => tracked.channel.prefetch(subscribeOptions.prefetch))
              yield* call(`declaring queue ${queueName}`, () =>
                tracked.channel.assertQueue(queueName, mainQueueOptions))
              const { consumerTag } = yield* call(`consuming from ${queueName}`, () =>
                tracked.channel.consume(queueName, (message) => {
                  if (message === null) {
                    // The broker cancelled us (queue deleted): start over on a fresh channel.
                    tracked.channel.close().catch(() => {})
                    return
                  }
                  Queue.unsafeOffer(received, { message, from: tracked })
                }, { noAck: false }))
              current = { tracked, consumerTag }
              if (stopped) yield* cancelConsumer
              yield* Deferred.succeed(started, undefined)
              yield* Effect.logDebug(`consuming from ${queueName} (prefetch ${subscribeOptions.prefetch})`)
              yield* Deferred.await(closed)
              if (!stopped) yield* Effect.logWarning(`consumer channel on ${queueName} closed; consuming again`)
            }),
          (tracked) => closeChannel(tracked)
        )

        const supervise = consumeOnce.pipe(
          Effect.tapError((error) => Effect.logWarning(`${error.message}; retrying`)),
          Effect.retry({ schedule: defaultReconnectSchedule, while: () => !stopped }),
          Effect.repeat({ while: () => !stopped }),
          Effect.annotateLogs({ component: "amqp-consumer", queue: queueName })
        )
        yield* Effect.forkScoped(supervise)
        yield* Effect.addFinalizer(() =>
          Effect.sync(() => {
            stopped = true
          })
        )
        yield* Deferred.await(started)

        const poison = (item: Received, reason: string) =>
          Effect.gen(function*() {
            settle(item, (channel) => channel.ack(item.message))
            const content = item.message.content
            const shown = content.subarray(0, logBodyChars * 4).toString("utf8").slice(0, logBodyChars)
            yield* Metric.increment(poisonCounter)
            yield* Effect.logError(`malformed message acknowledged and dropped: ${reason}`).pipe(
              Effect.annotateLogs({
                queue: queueName,
                bytes: content.length,
                body: shown.length < content.length ? `${shown}…` : shown
              })
            )
          })

        const toDelivery = (item: Received): Effect.Effect<Option.Option<Delivery>> => {
          if (!item.from.open) return Effect.succeedNone
          if (item.message.content.length > maxMessageBytes) {
            const reason = `${item.message.content.length} bytes, over ${maxMessageBytes}`
            return Effect.as(poison(item, reason), Option.none())
          }
          const decoded = decodeWakeUp(item.message.content.toString("utf8"))
          if (Either.isLeft(decoded)) {
            return Effect.as(poison(item, describeParseError(decoded.left)), Option.none())
          }
          let settled = false
          const once = (how: (channel: amqp.Channel) => void) =>
            Effect.sync(() => {
              if (settled) return
              settled = true
              settle(item, how)
            })
          return Effect.succeedSome({
            message: decoded.right,
            claimed: Option.none(),
            ack: once((channel) => channel.ack(item.message)),
            nack: once((channel) => channel.nack(item.message, false, true))
          })
        }

        // A message taken from the buffer is turned into a delivery without interruption, so none is lost in between.
        const take: Effect.Effect<Delivery> = Effect.uninterruptibleMask((restore) => {
          const taken = restore(Effect.suspend(() => stopped ? Effect.never : Queue.take(received)))
          const next: Effect.Effect<Delivery> = taken.pipe(
            Effect.flatMap(toDelivery),
            Effect.flatMap(Option.match({ onNone: () => next, onSome: Effect.succeed }))
          )
          return next
        })

        const subscription: Subscription = {
          take,
          stop: Effect.suspend(() => {
            if (stopped) return Effect.void
            stopped = true
            return cancelConsumer
          })
        }
        return subscription
      }).pipe(Effect.annotateLogs("queue", queueName))

    return ProgramQueue.of({ publish, subscribe })
  })

/** `ProgramQueue` on RabbitMQ, over the process's `AmqpConnection`. */
export const layer = (options: AmqpProgramQueueOptions = {}): Layer.Layer<ProgramQueue, never, AmqpConnection> =>
  Layer.scoped(ProgramQueue, make(options))
