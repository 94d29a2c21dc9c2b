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
  /**
   * Steps of one program a worker runs back to back (continuation, DESIGN.md invariant 3b): when a step completes and
   * the next job is in this worker's library, one guarded statement advances the program and claims the next step,
   * which runs at once without a message. After this many steps in a row the next step goes back through the queue,
   * so a long program does not keep a slot from the programs waiting behind it. `1`: one step per message.
   */
  readonly maxConsecutiveSteps: number
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
  /**
   * Retention, off unless set: every `pruneInterval` this worker deletes programs finished longer ago than this
   * (`ProgramExecutor.prune`, in batches). Env `PE_PRUNE_FINISHED_AFTER`, e.g. "30 days".
   */
  readonly pruneFinishedAfter?: Duration.Duration
  /** Errored (failed or cancelled) programs older than this are deleted too. Env `PE_PRUNE_ERRORED_AFTER`. */
  readonly pruneErroredAfter?: Duration.Duration
  /** How often a worker prunes, when one of the above is set. Default 1 hour. Env `PE_PRUNE_INTERVAL`. */
  readonly pruneInterval?: Duration.Duration
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
  maxConsecutiveSteps: 20,
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

const positiveDurations = ["leaseDuration", "heartbeatInterval", "sweepInterval", "staleAfter", "recoveryInterval"] as const

/**
 * Checks what the types cannot, and lists every problem at once: positive durations (a zero lease or interval would
 * spin or expire at once), a heartbeat shorter than the lease, integer sizes, attempts that can happen. Durations
 * given as `DurationInput` (JavaScript callers pass numbers of milliseconds) are decoded here.
 */
export const validate = (options: ExecutorOptions): Effect.Effect<ExecutorOptions, ConfigError.ConfigError> => {
  const problems: Array<string> = []
  const shown = (value: unknown) => typeof value === "number" || typeof value === "string" ? String(value) : typeof value
  const durations: Record<string, Duration.Duration> = {}
  const duration = (name: string, value: unknown, rule: "positive" | "non-negative"): void => {
    // `Duration.decode` turns a negative or NaN number into zero: look at the number itself first.
    const decoded = typeof value === "number" && !(value >= 0) ? Option.none() : Duration.decodeUnknown(value)
    if (Option.isNone(decoded)) {
      problems.push(`${name} must be a ${rule} duration (got ${shown(value)})`)
    } else if (rule === "positive" ? Duration.isZero(decoded.value) : false) {
      problems.push(`${name} must be a positive duration (got ${Duration.format(decoded.value)})`)
    } else {
      durations[name] = decoded.value
    }
  }
  const integer = (name: string, value: number, min: number, unlimited: boolean) => {
    if (!(Number.isInteger(value) && value >= min) && !(unlimited && value === Infinity)) {
      problems.push(`${name} must be an integer >= ${min}${unlimited ? " (Infinity for no limit)" : ""} (got ${shown(value)})`)
    }
  }
  integer("concurrency", options.concurrency, 1, false)
  integer("maxAttempts", options.maxAttempts, 1, true)
  integer("maxLostRuns", options.maxLostRuns, 0, true)
  integer("maxConsecutiveSteps", options.maxConsecutiveSteps, 1, false)
  integer("sweepBatchSize", options.sweepBatchSize, 1, false)
  for (const name of positiveDurations) duration(name, options[name], "positive")
  duration("shutdownGrace", options.shutdownGrace, "non-negative")
  for (const name of ["pruneFinishedAfter", "pruneErroredAfter", "pruneInterval"] as const) {
    if (options[name] !== undefined) duration(name, options[name], "positive")
  }
  if (!Option.isOption(options.jobTimeout)) {
    problems.push("jobTimeout must be an Option of a duration (Option.none() for no limit)")
  } else if (Option.isSome(options.jobTimeout)) {
    duration("jobTimeout", options.jobTimeout.value, "positive")
  }
  const { heartbeatInterval, leaseDuration } = durations
  if (
    heartbeatInterval !== undefined && leaseDuration !== undefined &&
    Duration.greaterThanOrEqualTo(heartbeatInterval, leaseDuration)
  ) {
    problems.push(
      `heartbeatInterval must be shorter than leaseDuration (got ${Duration.format(heartbeatInterval)} and ${
        Duration.format(leaseDuration)
      })`
    )
  }
  if (typeof options.workerId !== "string" || options.workerId === "") problems.push("workerId must be a non-empty string")
  if (options.onUnknownJob !== "fail" && options.onUnknownJob !== "skip") {
    problems.push(`onUnknownJob must be "fail" or "skip" (got ${shown(options.onUnknownJob)})`)
  }
  if (problems.length > 0) {
    return Effect.fail(ConfigError.InvalidData([], `invalid executor options: ${problems.join("; ")}`))
  }
  return Effect.succeed({
    ...options,
    ...durations,
    jobTimeout: Option.isSome(options.jobTimeout) ? Option.some(durations.jobTimeout!) : Option.none()
  })
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
        maxConsecutiveSteps: Config.option(Config.integer("PE_MAX_CONSECUTIVE_STEPS")),
        jobTimeout: duration("PE_JOB_TIMEOUT"),
        recoveryInterval: duration("PE_RECOVERY_INTERVAL"),
        sweepInterval: duration("PE_SWEEP_INTERVAL"),
        staleAfter: duration("PE_STALE_AFTER"),
        shutdownGrace: duration("PE_SHUTDOWN_GRACE"),
        onUnknownJob: Config.option(Config.literal("fail", "skip")("PE_ON_UNKNOWN_JOB")),
        pruneFinishedAfter: duration("PE_PRUNE_FINISHED_AFTER"),
        pruneErroredAfter: duration("PE_PRUNE_ERRORED_AFTER"),
        pruneInterval: duration("PE_PRUNE_INTERVAL")
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
