/**
 * How a worker runs programs. Every field has a default; `layer` overrides some, `layerFromEnv` reads them from
 * `PE_*` environment variables (see the README's configuration reference).
 */
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import { hostname } from "node:os"

export type UnknownJobPolicy = "fail" | "skip"

export interface ExecutorOptions {
  /** Steps run at once by this worker; also the queue's prefetch. */
  readonly concurrency: number
  /** Written to `locked_by`; unique per process. */
  readonly workerId: string
  /** How long a claimed step belongs to this worker without a heartbeat. */
  readonly leaseDuration: Duration.Duration
  /** How often a running step's lease is extended (and cancellation noticed). Well under `leaseDuration`. */
  readonly heartbeatInterval: Duration.Duration
  /** Delay before the n-th retry of a step: its n-th delay. When the schedule ends, the failure becomes fatal. */
  readonly retrySchedule: Schedule.Schedule<unknown, unknown>
  /**
   * Runs of one step that did not complete before it fails: retryable failures and lost runs (see `maxLostRuns`)
   * alike. `Infinity`: no limit (the old library's way).
   */
  readonly maxAttempts: number
  /**
   * Runs of one step that may end without an outcome (the worker killed, exiting, out of memory; the lease lost)
   * before the program fails, since such a job may be what crashes its workers. A bound of its own, reset when the
   * step completes, so a healthy program that shared a worker with a crash-looping job is not failed with it: it
   * loses one run per crash, and completes its step between them. Checked when the step is claimed again.
   */
  readonly maxLostRuns: number
  /** A job run longer than this fails as retryable. None: no limit. */
  readonly jobTimeout: Option.Option<Duration.Duration>
  /** How often the sweeper looks for steps whose wake-up was lost. */
  readonly sweepInterval: Duration.Duration
  /** A due, unleased step untouched for this long is re-published by the sweeper (then after 2×, 4×… as long). */
  readonly staleAfter: Duration.Duration
  /**
   * How often a worker looks for leases that expired without an outcome (a dead worker's steps) and re-publishes
   * those steps (each after a random part of the interval): such a step runs again within
   * `leaseDuration + 2 × recoveryInterval` of its worker's death.
   */
  readonly recoveryInterval: Duration.Duration
  /** Most wake-ups one sweep re-publishes. */
  readonly sweepBatchSize: number
  /** On shutdown, running jobs get this long to finish before they are interrupted. */
  readonly shutdownGrace: Duration.Duration
  /** A program naming a job this worker does not know: fail it (default), or skip the job as the old library did. */
  readonly onUnknownJob: UnknownJobPolicy
  /**
   * Retries of a database or broker operation that failed (connection lost, server restarting) before the worker
   * gives the message back. The worker itself never exits because of them.
   */
  readonly storageRetry: Schedule.Schedule<unknown, unknown>
}

/** Exponential from 1 s, doubled each time, with jitter, each delay capped at 5 minutes. */
export const defaultRetrySchedule: Schedule.Schedule<unknown, unknown> = Schedule.exponential("1 second", 2).pipe(
  Schedule.jittered,
  Schedule.modifyDelay((delay) => Duration.min(delay, Duration.minutes(5)))
)

export const defaultStorageRetry: Schedule.Schedule<unknown, unknown> = Schedule.exponential("100 millis", 2).pipe(
  Schedule.modifyDelay((delay) => Duration.min(delay, Duration.seconds(5))),
  Schedule.upTo("1 minute")
)

export const defaults = (): ExecutorOptions => ({
  concurrency: 10,
  workerId: `${hostname()}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`,
  leaseDuration: Duration.seconds(30),
  heartbeatInterval: Duration.seconds(10),
  retrySchedule: defaultRetrySchedule,
  maxAttempts: 20,
  maxLostRuns: 3,
  jobTimeout: Option.none(),
  sweepInterval: Duration.seconds(30),
  staleAfter: Duration.minutes(1),
  recoveryInterval: Duration.seconds(5),
  sweepBatchSize: 1000,
  shutdownGrace: Duration.seconds(20),
  onUnknownJob: "fail",
  storageRetry: defaultStorageRetry
})

export class ExecutorConfig extends Context.Reference<ExecutorConfig>()("@program-executor/core/ExecutorConfig", {
  defaultValue: defaults
}) {}

/** Checks what the types cannot: positive sizes, a heartbeat well inside the lease. */
export const validate = (options: ExecutorOptions): Effect.Effect<ExecutorOptions, ConfigError.ConfigError> => {
  const problems: Array<string> = []
  if (!Number.isInteger(options.concurrency) || options.concurrency < 1) problems.push("concurrency must be >= 1")
  if (!(options.maxAttempts >= 1)) problems.push("maxAttempts must be >= 1 (Infinity for no limit)")
  if (!(options.maxLostRuns >= 0)) problems.push("maxLostRuns must be >= 0 (Infinity for no limit)")
  if (!Duration.greaterThan(options.recoveryInterval, Duration.zero)) problems.push("recoveryInterval must be positive")
  if (!Number.isInteger(options.sweepBatchSize) || options.sweepBatchSize < 1) {
    problems.push("sweepBatchSize must be >= 1")
  }
  if (Duration.greaterThanOrEqualTo(options.heartbeatInterval, options.leaseDuration)) {
    problems.push("heartbeatInterval must be shorter than leaseDuration")
  }
  return problems.length === 0
    ? Effect.succeed(options)
    : Effect.fail(ConfigError.InvalidData([], `invalid executor options: ${problems.join("; ")}`))
}

export const layer = (options: Partial<ExecutorOptions> = {}): Layer.Layer<ExecutorConfig, ConfigError.ConfigError> =>
  Layer.effect(ExecutorConfig, validate({ ...defaults(), ...options }))

const duration = (name: string) => Config.option(Config.duration(name))

/** A whole number, or "unlimited" for `Infinity`. */
const countOrUnlimited = (name: string) =>
  Config.option(
    Config.string(name).pipe(
      Config.mapOrFail((raw) => {
        const value = raw === "unlimited" ? Infinity : Number(raw)
        return Number.isInteger(value) || value === Infinity
          ? Either.right(value)
          : Either.left(ConfigError.InvalidData([name], "expected a whole number or unlimited"))
      })
    )
  )

/**
 * Reads `PE_CONCURRENCY`, `PE_LEASE_DURATION`, … ; durations as "30 seconds", `PE_MAX_ATTEMPTS` and
 * `PE_MAX_LOST_RUNS` may be "unlimited".
 */
export const layerFromEnv = (options: Partial<ExecutorOptions> = {}): Layer.Layer<
  ExecutorConfig,
  ConfigError.ConfigError
> =>
  Layer.effect(
    ExecutorConfig,
    Effect.gen(function*() {
      const env = yield* Config.all({
        concurrency: Config.option(Config.integer("PE_CONCURRENCY")),
        workerId: Config.option(Config.string("PE_WORKER_ID")),
        leaseDuration: duration("PE_LEASE_DURATION"),
        heartbeatInterval: duration("PE_HEARTBEAT_INTERVAL"),
        maxAttempts: countOrUnlimited("PE_MAX_ATTEMPTS"),
        maxLostRuns: countOrUnlimited("PE_MAX_LOST_RUNS"),
        jobTimeout: duration("PE_JOB_TIMEOUT"),
        recoveryInterval: duration("PE_RECOVERY_INTERVAL"),
        sweepInterval: duration("PE_SWEEP_INTERVAL"),
        staleAfter: duration("PE_STALE_AFTER"),
        shutdownGrace: duration("PE_SHUTDOWN_GRACE"),
        onUnknownJob: Config.option(Config.literal("fail", "skip")("PE_ON_UNKNOWN_JOB"))
      })
      const fromEnv: Partial<ExecutorOptions> = {}
      for (const [key, value] of Object.entries(env)) {
        if (Option.isSome(value as Option.Option<unknown>)) {
          const found = (value as Option.Some<unknown>).value
          ;(fromEnv as Record<string, unknown>)[key] = key === "jobTimeout" ? Option.some(found) : found
        }
      }
      return yield* validate({ ...defaults(), ...options, ...fromEnv })
    })
  )
