/**
 * One AMQP connection per process, kept open: it reconnects with a capped exponential `Schedule` after a broker
 * restart or a dropped socket (and keeps trying when the broker is down at start). Users open channels through it
 * and re-open them when they close; nothing here needs a process restart.
 *
 * The URL's password stays `Redacted`: logs and errors name only the host, port and vhost.
 */
import { Url } from "@program-executor/core"
import * as amqp from "amqplib"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import { identity } from "effect/Function"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Runtime from "effect/Runtime"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import { hostname } from "node:os"

export class AmqpError extends Schema.TaggedError<AmqpError>()("AmqpError", {
  message: Schema.String,
  cause: Schema.optionalWith(Schema.Defect, { exact: true })
}) {}

/**
 * The URL cannot be used: unparsable, not `amqp:`/`amqps:`, no host, or a raw reserved character in the user name or
 * password. Raised when the layer is built, before any connection attempt. The message never contains the password.
 */
export class InvalidAmqpUrlError extends Schema.TaggedError<InvalidAmqpUrlError>()("InvalidAmqpUrlError", {
  message: Schema.String
}) {}

const invalidUrl = (url: string, why: string) =>
  new InvalidAmqpUrlError({ message: `invalid AMQP URL ${Url.redact(url)}: ${why}` })

/**
 * The URL as amqplib will read it, checked up front: amqplib parses it inside its connection callback, where a throw
 * would leave the connection fiber dead and every publish waiting for a connection that never comes.
 */
export const parseUrl = (url: string): Either.Either<URL, InvalidAmqpUrlError> => {
  const parsed = Url.parseSafely(url)
  if (parsed === undefined) {
    return Either.left(invalidUrl(
      url,
      "it cannot be parsed as amqp://user:password@host:port/vhost; a user name or password containing / ? # @ : or % " +
        "must be percent-encoded (encodeURIComponent)"
    ))
  }
  if (parsed.protocol !== "amqp:" && parsed.protocol !== "amqps:") {
    return Either.left(invalidUrl(url, `the scheme must be amqp: or amqps:, not ${parsed.protocol}`))
  }
  if (parsed.hostname === "") return Either.left(invalidUrl(url, "it names no host"))
  return Either.right(parsed)
}

export interface AmqpConnectionOptions {
  /** `amqp://user:password@host:port/vhost`. */
  readonly url: Redacted.Redacted<string> | string
  /**
   * Delays between connection attempts, restarted after every successful connection.
   * Default: from 100 ms, doubling, capped at 5 s, forever.
   */
  readonly reconnectSchedule?: Schedule.Schedule<unknown, unknown>
  /** A connection attempt (TCP and AMQP handshake) that takes longer fails. Default 10 seconds. */
  readonly connectTimeout?: Duration.DurationInput
  /** AMQP heartbeat: how soon a silently dead peer is noticed. Default 10 seconds. */
  readonly heartbeat?: Duration.DurationInput
  /** Shown by the broker (`connection_name`) so operators can tell workers apart. */
  readonly connectionName?: string
}

export const defaultReconnectSchedule: Schedule.Schedule<unknown, unknown> = Schedule.exponential("100 millis", 2).pipe(
  Schedule.modifyDelay((delay) => Duration.min(delay, Duration.seconds(5)))
)

export interface Connected {
  readonly model: amqp.ChannelModel
  /** 1 for the first connection, incremented on every reconnect. */
  readonly generation: number
}

export interface AmqpConnectionShape {
  /** The open connection; waits (without limit) while the broker is unreachable. Bound it where it matters. */
  readonly connected: Effect.Effect<Connected>
  /** Opens a channel on the current connection, waiting for one. Channel errors are logged, never thrown. */
  readonly createChannel: Effect.Effect<amqp.Channel, AmqpError>
  /** Like `createChannel`, in confirm mode: every publish is acknowledged by the broker. */
  readonly createConfirmChannel: Effect.Effect<amqp.ConfirmChannel, AmqpError>
  /** `host:port/vhost`, without credentials: safe to log. */
  readonly endpoint: string
}

export class AmqpConnection extends Context.Tag("@program-executor/amqp/AmqpConnection")<
  AmqpConnection,
  AmqpConnectionShape
>() {}

/** The URL without credentials, for logs. */
const describeEndpoint = (parsed: URL): string => {
  const vhost = decodeURIComponent(parsed.pathname.slice(1)) || "/"
  return `${parsed.hostname}:${parsed.port || (parsed.protocol === "amqps:" ? "5671" : "5672")} vhost ${vhost}`
}

const errorMessage = (error: unknown) => error instanceof Error ? error.message : String(error)

export const make = (
  options: AmqpConnectionOptions
): Effect.Effect<AmqpConnectionShape, InvalidAmqpUrlError, Scope.Scope> =>
  Effect.gen(function*() {
    const parsedUrl = yield* parseUrl(Redacted.isRedacted(options.url) ? Redacted.value(options.url) : options.url)
    const endpoint = describeEndpoint(parsedUrl)
    const reconnectSchedule = options.reconnectSchedule ?? defaultReconnectSchedule
    const connectTimeout = Duration.decode(options.connectTimeout ?? "10 seconds")
    const heartbeatSeconds = Math.max(1, Math.round(Duration.toSeconds(options.heartbeat ?? "10 seconds")))
    const connectionName = options.connectionName ?? `program-executor ${hostname()}:${process.pid}`
    const runtime = yield* Effect.runtime<never>()
    const runLog = (effect: Effect.Effect<void>) => Runtime.runFork(runtime)(effect)

    const state = yield* SubscriptionRef.make(Option.none<Connected>())
    let generation = 0

    // amqplib's promise cannot be cancelled: a connection that opens after we gave up is closed at once.
    const withHeartbeat = new URL(parsedUrl)
    if (!withHeartbeat.searchParams.has("heartbeat")) withHeartbeat.searchParams.set("heartbeat", String(heartbeatSeconds))
    const connectUrl = Redacted.make(withHeartbeat.toString())
    const connectOnce = Effect.async<amqp.ChannelModel, AmqpError>((resume) => {
      let abandoned = false
      amqp.connect(Redacted.value(connectUrl), {
        noDelay: true,
        timeout: Duration.toMillis(connectTimeout),
        clientProperties: { connection_name: connectionName }
      }).then(
        (model) => {
          if (abandoned) model.close().catch(() => {})
          else resume(Effect.succeed(model))
        },
        (error) =>
          resume(Effect.fail(new AmqpError({ message: `cannot connect to ${endpoint}: ${errorMessage(error)}` })))
      )
      return Effect.sync(() => {
        abandoned = true
      })
    }).pipe(
      Effect.timeoutFail({
        duration: connectTimeout,
        onTimeout: () => new AmqpError({ message: `cannot connect to ${endpoint}: timed out` })
      })
    )

    const connectWithRetry = connectOnce.pipe(
      Effect.tapError((error) => Effect.logWarning(`${error.message}; retrying`)),
      Effect.retry(reconnectSchedule)
    )

    /** One connection's life: publish it, wait for it to close, withdraw it. */
    // Interruptible while connecting (an abandoned attempt closes itself), so the layer can close during an outage.
    const session = Effect.acquireUseRelease(
      Effect.interruptible(connectWithRetry),
      (model) =>
        Effect.gen(function*() {
          const closed = yield* Deferred.make<string>()
          model.on("close", (error?: unknown) => {
            Deferred.unsafeDone(closed, Exit.succeed(error === undefined ? "closed" : errorMessage(error)))
          })
          // Without a listener an 'error' event would crash the process; 'close' follows it.
          model.on("error", (error: unknown) => {
            runLog(Effect.logWarning(`AMQP connection error: ${errorMessage(error)}`))
          })
          model.on("blocked", (reason: unknown) => {
            runLog(Effect.logWarning(`AMQP connection blocked by the broker: ${String(reason)}`))
          })
          model.on("unblocked", () => runLog(Effect.logInfo("AMQP connection unblocked")))
          generation++
          yield* SubscriptionRef.set(state, Option.some({ model, generation }))
          yield* Effect.logInfo(`connected to RabbitMQ at ${endpoint}`).pipe(
            Effect.annotateLogs("generation", generation)
          )
          const reason = yield* Deferred.await(closed)
          yield* SubscriptionRef.set(state, Option.none())
          yield* Effect.logWarning(`AMQP connection to ${endpoint} lost (${reason}); reconnecting`)
        }),
      (model, exit) =>
        Exit.isInterrupted(exit)
          ? SubscriptionRef.set(state, Option.none()).pipe(
            Effect.zipRight(Effect.tryPromise(() => model.close()).pipe(
              // Releases run uninterruptibly; a timeout can only end an interruptible effect.
              Effect.interruptible,
              Effect.timeout("5 seconds"),
              Effect.ignore
            ))
          )
          : Effect.void
    )
    yield* Effect.forkScoped(Effect.forever(session).pipe(Effect.annotateLogs("component", "amqp-connection")))

    const connected: Effect.Effect<Connected> = state.changes.pipe(
      Stream.filterMap(identity),
      Stream.runHead,
      Effect.flatMap(Effect.orDie)
    )

    const withChannelListeners = <C extends amqp.Channel>(channel: C): C => {
      channel.on("error", (error: unknown) => {
        runLog(Effect.logWarning(`AMQP channel closed by the broker: ${errorMessage(error)}`))
      })
      return channel
    }

    // Interruptible: a channel that opens after its caller gave up is closed at once.
    const open = <C extends amqp.Channel>(what: string, create: (model: amqp.ChannelModel) => Promise<C>) =>
      Effect.flatMap(connected, ({ model }) =>
        Effect.async<C, AmqpError>((resume) => {
          let abandoned = false
          create(model).then(
            (channel) => {
              withChannelListeners(channel)
              if (abandoned) channel.close().catch(() => {})
              else resume(Effect.succeed(channel))
            },
            (error) => {
              const message = `cannot open ${what} on ${endpoint}: ${errorMessage(error)}`
              resume(Effect.fail(new AmqpError({ message })))
            }
          )
          return Effect.sync(() => {
            abandoned = true
          })
        }))

    return {
      connected,
      createChannel: open("a channel", (model) => model.createChannel()),
      createConfirmChannel: open("a confirm channel", (model) => model.createConfirmChannel()),
      endpoint
    }
  })

const normalize = (input: string | Redacted.Redacted<string> | AmqpConnectionOptions): AmqpConnectionOptions =>
  typeof input === "string" || Redacted.isRedacted(input) ? { url: input } : input

/** From a URL (kept `Redacted`) or full options. Building it does not wait for the broker. */
export const layer = (
  options: string | Redacted.Redacted<string> | AmqpConnectionOptions
): Layer.Layer<AmqpConnection, InvalidAmqpUrlError> => Layer.scoped(AmqpConnection, make(normalize(options)))

/** From `Config`, e.g. `layerConfig({ url: Config.redacted("AMQP_URL") })`. */
export const layerConfig = (
  config: Config.Config.Wrap<AmqpConnectionOptions>
): Layer.Layer<AmqpConnection, ConfigError.ConfigError | InvalidAmqpUrlError> =>
  Layer.scoped(AmqpConnection, Effect.flatMap(Config.unwrap(config), make))
