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
import * as Schema from "effect/Schema"
import { Program, ProgramQueue, QueueError } from "@program-executor/core"
import type { Delivery, ProgramRecord, Subscription } from "@program-executor/core"
import { AmqpConnection, AmqpError, defaultReconnectSchedule } from "./AmqpConnection.js"
import { delayBucket, delayQueueExpiry } from "./internal/delayBuckets.js"
import { parseWakeUp } from "./internal/wakeUp.js"

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

/** The queue name breaks a rule below. Raised when the layer is built, before anything is declared. */
export class InvalidQueueNameError extends Schema.TaggedError<InvalidQueueNameError>()("InvalidQueueNameError", {
  queueName: Schema.String,
  message: Schema.String
}) {}

const queueNamePattern = /^[A-Za-z0-9_][A-Za-z0-9_.:-]*$/
/** RabbitMQ allows 255 bytes; the longest delay queue adds `.delay.2147483647` (17 characters). */
export const maxQueueNameLength = 200

/**
 * A queue name the broker will use as given. An empty name would make the broker invent one for each declaration
 * (publishes to "" go nowhere), and it refuses names starting with `amq.` (a subscriber would retry for ever).
 */
export const validateQueueName = (queueName: string): Either.Either<string, InvalidQueueNameError> => {
  const fail = (rule: string) =>
    Either.left(
      new InvalidQueueNameError({
        queueName: String(queueName),
        message: `invalid queue name ${JSON.stringify(String(queueName)).slice(0, 80)}: ${rule}`
      })
    )
  if (typeof queueName !== "string" || queueName === "") return fail("it must not be empty")
  if (queueName.startsWith("amq.")) return fail("names starting with amq. are reserved by RabbitMQ")
  if (!queueNamePattern.test(queueName) || queueName.length > maxQueueNameLength) {
    return fail(`it must match ${queueNamePattern.source} and be at most ${maxQueueNameLength} characters`)
  }
  return Either.right(queueName)
}

/** Malformed messages acked and dropped, tagged with `queue`. */
export const poisonMessages = Metric.counter("program_executor_amqp_poison_messages_total", {
  description: "malformed AMQP messages acknowledged and dropped",
  incremental: true
})

/** The name of the delay queue carrying messages delayed by `bucket` ms. */
export const delayQueueName = (queueName: string, bucket: number) => `${queueName}.delay.${bucket}`

const decodeWakeUp = Schema.decodeUnknownEither(Schema.parseJson(Program.WakeUp))

/** The longest delay `setTimeout` honours. */
const maxTimerMillis = 2 ** 31 - 1

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

/** A message as the consumer callback got it, and the channel it came on. */
interface Received {
  readonly message: amqp.ConsumeMessage
  readonly from: OpenChannel<amqp.Channel>
}

const settle = (item: Received, how: (channel: amqp.Channel) => void) => {
  // A channel that closed took its deliveries with it: the broker redelivers them.
  if (!item.from.open) return
  try {
    how(item.from.channel)
  } catch {
    // Closed between the check and the call: same as above.
  }
}

/** A delivery whose first ack or nack wins: the executor may settle a message on more than one path. */
class AmqpDelivery implements Delivery {
  readonly claimed = Option.none<ProgramRecord>()
  readonly ack: Effect.Effect<void>
  readonly nack: Effect.Effect<void>
  private settled = false
  constructor(readonly message: Program.WakeUp, received: Received) {
    this.ack = Effect.sync(() => this.settleOnce(received, (channel) => channel.ack(received.message)))
    this.nack = Effect.sync(() => this.settleOnce(received, (channel) => channel.nack(received.message, false, true)))
  }
  private settleOnce(received: Received, how: (channel: amqp.Channel) => void) {
    if (this.settled) return
    this.settled = true
    settle(received, how)
  }
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
    const queueName = yield* validateQueueName(options.queueName ?? defaultQueueName)
    const connection = yield* AmqpConnection
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

    const isReady = (current: Publisher | undefined): current is Publisher =>
      current !== undefined && current.tracked.open && current.declared

    /** Opens the confirm channel when there is none or it closed, and declares the main queue when needed. */
    const openPublisher = publisherLock.withPermits(1)(Effect.gen(function*() {
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

    /** The shared confirm channel. The lock only serializes (re)opening: an open, declared channel is used as is. */
    const publisherChannel = Effect.suspend(() => isReady(publisher) ? Effect.succeed(publisher) : openPublisher)
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

    const publishTimeoutMillis = Duration.toMillis(publishTimeout)

    /** One publish over its attempts: when it gives up, and what went wrong last (for the timeout's message). */
    interface Attempts {
      readonly body: Buffer
      readonly bucket: number
      readonly deadline: number
      lastError: string
      expired: boolean
    }

    const timedOut = (attempts: Attempts) => {
      attempts.expired = true
      return new AmqpError({
        message: `publish not confirmed within ${Duration.format(publishTimeout)} (last: ${attempts.lastError})`
      })
    }

    /** A lost channel or connection, or a returned message, is worth another try until the deadline; a nack is not. */
    const isRetryable = (attempts: Attempts, error: AmqpError | Refused): error is AmqpError =>
      error._tag === "AmqpError" && !attempts.expired

    const toQueueError = (error: AmqpError | Refused) =>
      new QueueError({
        message: `publishing to ${queueName} on ${connection.endpoint}: ${error.message}`,
        cause: error
      })

    /**
     * Sends on `current` and waits for the broker's confirm. A plain timer, cleared by the confirm (amqplib calls back
     * on every outcome: ack, nack, channel closed) or by an interruption, ends the wait at the deadline: cheaper than
     * `Effect.timeout`, which forks a fiber and sleeps per publish.
     */
    const confirmed = (current: Publisher, routingKey: string, attempts: Attempts) =>
      Effect.async<void, AmqpError | Refused>((resume) => {
        const messageId = String(++nextMessageId)
        const properties = { persistent: true, mandatory: true, contentType: "application/json", messageId }
        const remaining = Math.max(0, attempts.deadline - Date.now())
        // Longer than setTimeout can wait (it would fire at once): the Effect.timeout of `withRetries` ends the wait.
        const timer = remaining <= maxTimerMillis
          ? setTimeout(() => resume(Effect.fail(timedOut(attempts))), remaining)
          : undefined
        try {
          current.tracked.channel.publish("", routingKey, attempts.body, properties, (error) => {
            clearTimeout(timer)
            if (current.returned.size > 0 && current.returned.delete(messageId)) {
              resume(Effect.fail(new AmqpError({ message: `queue ${routingKey} missing: message returned` })))
            } else if (error === null || error === undefined) resume(Effect.void)
            else if (error.message === "message nacked") {
              resume(Effect.fail(new Refused({ message: "the broker refused the message (nack)" })))
            } else resume(Effect.fail(new AmqpError({ message: `publish not confirmed: ${errorMessage(error)}` })))
          })
        } catch (error) {
          clearTimeout(timer)
          resume(Effect.fail(new AmqpError({ message: `publish failed: ${errorMessage(error)}` })))
        }
        // Interrupted while waiting (a shutdown past its grace): the timer must not hold the process open.
        return Effect.sync(() => clearTimeout(timer))
      })

    const publishOnce = (attempts: Attempts) =>
      Effect.gen(function*() {
        const current = yield* publisherChannel
        const routingKey = attempts.bucket === 0 ? queueName : delayQueueName(queueName, attempts.bucket)
        if (attempts.bucket > 0) yield* declareDelayQueue(current.tracked.channel, attempts.bucket)
        yield* confirmed(current, routingKey, attempts)
      })

    // Until the deadline: waiting for a connection, (re)declaring, backing off between attempts. Interruptible
    // because the executor publishes from uninterruptible bookkeeping and a timeout only ends interruptible code.
    const withRetries = (attempts: Attempts) =>
      publishOnce(attempts).pipe(
        Effect.tapError((error) =>
          Effect.sync(() => {
            attempts.lastError = error.message
          })
        ),
        Effect.retry({ schedule: defaultReconnectSchedule, while: (error) => isRetryable(attempts, error) }),
        Effect.interruptible,
        Effect.timeoutFail({
          duration: Math.max(0, attempts.deadline - Date.now()),
          onTimeout: () => timedOut(attempts)
        }),
        Effect.mapError(toQueueError)
      )

    const publish: ProgramQueue["Type"]["publish"] = (message, publishOptions) =>
      Effect.suspend(() => {
        const attempts: Attempts = {
          body: Buffer.from(JSON.stringify({ runId: message.runId, step: message.step })),
          bucket: publishOptions?.delay === undefined
            ? 0
            : delayBucket(Duration.toMillis(Duration.decode(publishOptions.delay))),
          deadline: Date.now() + publishTimeoutMillis,
          lastError: "no connection to the broker",
          expired: false
        }
        // The common case, an open declared channel and no delay, is one send and one confirm: the retry machinery
        // (its fibers and timers) is only built when that first attempt fails for a reason worth retrying. The wait
        // stays interruptible, as it is in `withRetries`, even when the caller is not.
        const current = publisher
        if (attempts.bucket > 0 || !isReady(current) || publishTimeoutMillis > maxTimerMillis) {
          return withRetries(attempts)
        }
        return Effect.catchAll(Effect.interruptible(confirmed(current, queueName, attempts)), (error) => {
          if (!isRetryable(attempts, error)) return Effect.fail(toQueueError(error))
          attempts.lastError = error.message
          return withRetries(attempts)
        })
      })

    // --- consuming -----------------------------------------------------------------------------------------------

    const subscribe: ProgramQueue["Type"]["subscribe"] = (subscribeOptions) =>
      Effect.gen(function*() {
        const started = yield* Deferred.make<void>()
        let stopped = false
        let current: { readonly tracked: OpenChannel<amqp.Channel>; readonly consumerTag: string } | undefined

        // Messages the consumer callback got that no `take` has yet, and the `take`s waiting for one: an array and a
        // list of callbacks rather than an Effect Queue, whose take builds a Deferred and several effects per message.
        // Both stay short (the broker sends at most `prefetch` unacked messages).
        const buffered: Array<Received> = []
        const takers: Array<(taken: Effect.Effect<Received>) => void> = []
        const receive = (item: Received) => {
          const taker = takers.shift()
          if (taker === undefined) buffered.push(item)
          else taker(Effect.succeed(item))
        }
        const nextReceived: Effect.Effect<Received> = Effect.suspend(() => {
          if (stopped) return Effect.never
          const item = buffered.shift()
          if (item !== undefined) return Effect.succeed(item)
          return Effect.async<Received>((resume) => {
            takers.push(resume)
            // An interrupted take must not be handed a message: it would be neither delivered nor given back.
            return Effect.sync(() => {
              const index = takers.indexOf(resume)
              if (index >= 0) takers.splice(index, 1)
            })
          })
        })

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
              Effect.zipRight(Effect.sync(() => buffered.splice(0))),
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
                  receive({ message, from: tracked })
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

        /** A delivery, or `undefined` when its channel closed (the broker redelivers it) or it was poison (acked). */
        const toDelivery = (item: Received): Effect.Effect<Delivery | undefined> => {
          if (!item.from.open) return Effect.succeed(undefined)
          const content = item.message.content
          if (content.length > maxMessageBytes) {
            return Effect.as(poison(item, `${content.length} bytes, over ${maxMessageBytes}`), undefined)
          }
          const text = content.toString("utf8")
          // Every delivery is parsed by hand (the Schema costs several times more); the schema only sees the rest,
          // to accept any other shape it accepts and to say why the others are poison.
          const wakeUp = parseWakeUp(text)
          if (wakeUp !== undefined) return Effect.succeed(new AmqpDelivery(wakeUp, item))
          const decoded = decodeWakeUp(text)
          return Either.isRight(decoded)
            ? Effect.succeed(new AmqpDelivery(decoded.right, item))
            : Effect.as(poison(item, describeParseError(decoded.left)), undefined)
        }

        // A message taken from the buffer is turned into a delivery without interruption, so none is lost in between.
        const take: Effect.Effect<Delivery> = Effect.uninterruptibleMask((restore) => {
          const taken = restore(nextReceived)
          const next: Effect.Effect<Delivery> = Effect.flatMap(
            Effect.flatMap(taken, toDelivery),
            (delivery) => delivery === undefined ? next : Effect.succeed(delivery)
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

    // The connection answers or is being re-established; the latter is "unreachable" for a readiness check.
    const ping: Effect.Effect<void, QueueError> = connection.connected.pipe(
      Effect.asVoid,
      Effect.timeoutFail({
        duration: "2 seconds",
        onTimeout: () => new QueueError({ message: `no connection to ${connection.endpoint}` })
      })
    )

    return ProgramQueue.of({ publish, subscribe, ping })
  })

/** `ProgramQueue` on RabbitMQ, over the process's `AmqpConnection`. */
export const layer = (
  options: AmqpProgramQueueOptions = {}
): Layer.Layer<ProgramQueue, InvalidQueueNameError, AmqpConnection> =>
  Layer.scoped(ProgramQueue, make(options))
