/**
 * The worker: takes wake-ups from the queue, claims steps in the repository, runs jobs with a heartbeat, and records
 * what happened, following the execution invariants of DESIGN.md. `run` never returns; interrupt it (SIGTERM under
 * `NodeRuntime.runMain`) to shut down gracefully.
 */
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as HashMap from "effect/HashMap"
import * as HashSet from "effect/HashSet"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Random from "effect/Random"
import * as Schedule from "effect/Schedule"
import * as Tracer from "effect/Tracer"
import { randomUUID } from "node:crypto"
import type * as Job from "./Job.js"
import { ExecutorConfig, type ExecutorOptions } from "./ExecutorConfig.js"
import { classify, type Failure } from "./internal/classify.js"
import * as metrics from "./internal/metrics.js"
import { nthDelay, retryOnFailure } from "./internal/retry.js"
import { isTraced, spanOfTraceparent, withTraceparent } from "./internal/tracing.js"
import { JobContext, type JobContextShape } from "./JobContext.js"
import { ExecutionTimeExceededError, FatalError, RetryableError } from "./JobError.js"
import { JobLibrary } from "./JobLibrary.js"
import { isValidWakeUp, type ProgramRecord } from "./Program.js"
import { ProgramEvent, ProgramEvents } from "./ProgramEvents.js"
import { ProgramQueue, type Delivery, type QueueError } from "./ProgramQueue.js"
import { pruneWith } from "./ProgramExecutor.js"
import {
  type ClaimOptions,
  isTransient,
  type Lease,
  type LeaseStatus,
  ProgramRepository,
  RepositoryError
} from "./ProgramRepository.js"

/** How a run of a job ended: it completed (well or not), or the lease ended under it. */
type Outcome =
  | { readonly _tag: "Completed"; readonly exit: Exit.Exit<unknown, unknown> }
  | { readonly _tag: "LeaseEnded"; readonly status: Exclude<LeaseStatus, "held"> }

/**
 * A step whose job runs here; `ended` is set when the heartbeat found its lease gone (and interrupted the job),
 * `settled` once the run is over (a job still running after that is abandoned: its writes are refused here, and by
 * the token in the database). `heldUntil` is when the lease ends by this worker's clock, as of its last successful
 * extension: a worker that cannot reach the database cannot vouch for a lease past that.
 */
interface LeasedStep {
  readonly lease: Lease
  readonly slot: Slot
  heldUntil: number
  ended?: Exclude<LeaseStatus, "held">
  /** When the heartbeat found the lease ended and interrupted the job (this worker's clock). */
  endedAt?: number
  settled: boolean
}

/**
 * One delivery being handled, on its own fiber, holding one of the worker's `concurrency` slots. The job runs on
 * that fiber (a fiber per job cost about a sixth of a step's CPU), so a job that ignores interruption (an
 * uninterruptible region, a finalizer that hangs) would hold the fiber: such a handler is taken over instead — its
 * step released or given up, its message settled, its slot freed — and the stuck fiber is left behind, its writes
 * refused (`LeasedStep.settled`, and the token in the database). Its message is settled once, whoever gets there
 * first.
 */
interface Slot {
  /** The wake-up of the step running now: after a continuation, a stand-in for a step no message carries. */
  delivery: Delivery
  handler: Fiber.RuntimeFiber<void> | undefined
  /** The step whose job runs now, if it does. */
  step: LeasedStep | undefined
  freed: boolean
}

/** How long a shutdown waits, after interrupting the jobs left at the end of its grace, before taking them over. */
export const shutdownMargin = Duration.seconds(1)

/** A step claimed by continuation, to run next on the same slot; `claimedAt` as in `runJob`. */
interface Continuation {
  readonly program: ProgramRecord
  readonly claimedAt: number
}

/** Every run of a step counts, whether it recorded a failure or was lost without an outcome. */
const attemptOf = (program: ProgramRecord) => program.stepRetryCount + program.stepLostCount + 1

/**
 * What the next step of a delivery's chain links its span to: the span of the step before it on this slot (a
 * continuation), else the span that published the wake-up (its `traceparent`, read only when traced).
 */
interface StepTrace {
  readonly traceparent: string | undefined
  previous: Tracer.Span | undefined
}

/**
 * Runs a claimed step's handling with its log annotations and, when a tracer is installed (`isTraced`), in a
 * `program-executor.step` span linked to the step before it (see `StepTrace`). The handler's fiber is the step's own
 * (one per delivery, never joined), so both are set on it for good instead of scoped with `Effect.annotateLogs` /
 * `Effect.withSpan`, whose restoring of the previous values cost as much again.
 */
const inStep = (program: ProgramRecord, trace: StepTrace) =>
<A, E, R>(handling: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> => {
  const attempt = attemptOf(program)
  // `runId` is already there: `handle` set it. The step changes along a chain of continued steps.
  const annotated = FiberRef.update(FiberRef.currentLogAnnotations, (annotations) =>
    HashMap.mutate(annotations, (mutable) => {
      HashMap.set(mutable, "step", program.step)
      HashMap.set(mutable, "job", program.jobs[program.step] ?? "")
      HashMap.set(mutable, "attempt", attempt)
    })).pipe(Effect.zipRight(handling))
  return Effect.flatMap(isTraced, (traced) => {
    if (!traced) return annotated
    const previous = trace.previous ?? spanOfTraceparent(trace.traceparent)
    return Effect.useSpan(
      "program-executor.step",
      {
        attributes: { runId: program.runId, step: program.step, job: program.jobs[program.step] ?? "", attempt },
        links: previous === undefined ? [] : [{ _tag: "SpanLink", span: previous, attributes: {} }],
        captureStackTrace: false
      },
      // Scoped to the step, unlike the annotations: the next step of a chain must not be this one's child.
      (span) => {
        trace.previous = span
        return Effect.locallyWith(annotated, FiberRef.currentContext, Context.add(Tracer.ParentSpan, span))
      }
    )
  })
}

const keyOf = (lease: Lease) => `${lease.runId}\u0000${lease.token}`

const isPlainObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value)

export const run: Effect.Effect<never, never, ProgramRepository | ProgramQueue | JobLibrary> = Effect.gen(function*() {
  const config = yield* ExecutorConfig
  const repository = yield* ProgramRepository
  const queue = yield* ProgramQueue
  const library = yield* JobLibrary
  const events = yield* ProgramEvents
  const claimOptions = { owner: config.workerId, leaseFor: config.leaseDuration }

  /**
   * A database or broker operation, retried while the service is unavailable. An error the database gives for the
   * data itself (`transient: false`) is not retried: the same statement would fail the same way, forever.
   */
  const storageRetry = config.storageRetry.pipe(Schedule.whileInput(isTransient))
  const durably = <A, E extends RepositoryError | QueueError, R>(what: string, operation: Effect.Effect<A, E, R>) =>
    retryOnFailure(
      Effect.tapError(operation, (error) =>
        isTransient(error)
          ? Effect.logWarning(`${what} failed, retrying: ${error.message}`)
          : Effect.logError(`${what} failed, not retried (the database refused the data): ${error.message}`)),
      storageRetry
    )

  // A worker started before its queue is reachable waits for it, however long that takes.
  const subscription = yield* durably(
    "subscribing to the queue",
    queue.subscribe({ prefetch: config.concurrency, claim: claimOptions })
  ).pipe(Effect.retry(Schedule.spaced("5 seconds")), Effect.orDie)
  const permits = yield* Effect.makeSemaphore(config.concurrency)
  const { beginShutdown, dispatch, keepLeases, queueHead, shutdown } = makeHandler(
    config,
    claimOptions,
    repository,
    queue,
    library,
    events,
    durably,
    permits
  )
  // Forked before the drain below is registered, so leases are still kept while running steps finish.
  yield* Effect.forkScoped(Effect.annotateLogs(keepLeases, "component", "heartbeat"))

  // Runs first on shutdown (finalizers run in reverse): stop receiving, let running steps finish within the grace
  // period, interrupt what is left; the subscription closes last.
  // Chains are told first: a step completing while the consumer is being cancelled is not continued.
  yield* Effect.addFinalizer(() => beginShutdown.pipe(Effect.zipRight(subscription.stop), Effect.zipRight(shutdown)))

  yield* Effect.forkScoped(sweeper(config, repository, queue, queueHead))
  yield* Effect.forkScoped(recoverer(config, repository, queue))
  if (config.pruneFinishedAfter !== undefined || config.pruneErroredAfter !== undefined) {
    yield* Effect.forkScoped(pruner(config, repository))
  }

  yield* Effect.logInfo("worker started").pipe(
    Effect.annotateLogs({ workerId: config.workerId, concurrency: config.concurrency, jobs: library.names.join(",") })
  )
  return yield* Effect.forever(permits.take(1).pipe(Effect.zipRight(subscription.take), Effect.flatMap(dispatch)))
}).pipe(Effect.scoped)

/**
 * Retention, when configured: deletes old finished and errored programs now and every `pruneInterval`, in batches
 * (see `ProgramExecutor.prune`). Several workers may prune at once: a row deleted by one is simply not found by another.
 */
const pruner = (config: ExecutorOptions, repository: ProgramRepository["Type"]) =>
  Effect.flatMap(Clock.currentTimeMillis, (now) => {
    const before = (age: Duration.Duration | undefined) =>
      age === undefined ? undefined : new Date(now - Duration.toMillis(age))
    return pruneWith(repository, {
      ...(config.pruneFinishedAfter === undefined ? {} : { finishedBefore: before(config.pruneFinishedAfter)! }),
      ...(config.pruneErroredAfter === undefined ? {} : { erroredBefore: before(config.pruneErroredAfter)! })
    })
  }).pipe(
    Effect.tap(({ errored, finished }) =>
      finished + errored === 0 ? Effect.void : Effect.logInfo(`pruned ${finished} finished, ${errored} errored`)
    ),
    Effect.catchAll((error) => Effect.logWarning(`prune failed: ${error.message}`)),
    Effect.repeat(Schedule.spaced(config.pruneInterval ?? Duration.hours(1))),
    Effect.annotateLogs("component", "pruner")
  )

/** Re-publishes steps whose wake-up was lost (a publish that failed after a commit, a broker that lost its queue). */
const sweeper = (
  config: ExecutorOptions,
  repository: ProgramRepository["Type"],
  queue: ProgramQueue["Type"],
  queueHead: Effect.Effect<Date | undefined>
) =>
  Effect.flatMap(queueHead, (head) =>
    repository.findStale({
      idleFor: config.staleAfter,
      limit: config.sweepBatchSize,
      ...(head === undefined ? {} : { queueHead: head })
    })).pipe(
    Effect.flatMap((stale) =>
      Effect.forEach(stale, (message) => queue.publish(message), { discard: true, concurrency: 8 }).pipe(
        Effect.zipRight(
          stale.length === 0 ? Effect.void : Effect.logInfo(`sweeper re-published ${stale.length} stale step(s)`)
        ),
        Effect.zipRight(Metric.incrementBy(metrics.stepsRecovered, stale.length))
      )
    ),
    Effect.catchAll((error) => Effect.logWarning(`sweep failed: ${error.message}`)),
    Effect.repeat(Schedule.spaced(config.sweepInterval)),
    Effect.annotateLogs("component", "sweeper")
  )

/**
 * Re-publishes the steps whose lease expired without an outcome: a dead worker's steps run again within
 * `leaseDuration + 2 × recoveryInterval`, not after `staleAfter`. (The broker redelivers a dead worker's messages at
 * once, while its leases still refuse them.) Each wake-up is delayed by a random part of `recoveryInterval`: the
 * steps a dead worker held together would otherwise be re-run together, likely on one worker again, so a job that
 * crashes its process would take the same neighbours down at every crash and exhaust their `maxLostRuns` with its own.
 */
const recoverer = (
  config: ExecutorOptions,
  repository: ProgramRepository["Type"],
  queue: ProgramQueue["Type"]
) =>
  repository.recoverExpired(config.sweepBatchSize).pipe(
    Effect.flatMap((expired) =>
      Effect.forEach(
        expired,
        (message) =>
          Effect.flatMap(
            Random.nextRange(0, Duration.toMillis(config.recoveryInterval)),
            (millis) => queue.publish(message, { delay: Duration.millis(Math.round(millis)) })
          ),
        { discard: true, concurrency: 8 }
      ).pipe(
        Effect.zipRight(
          expired.length === 0
            ? Effect.void
            : Effect.logWarning(`re-published ${expired.length} step(s) whose worker stopped extending the lease`)
        ),
        Effect.zipRight(Metric.incrementBy(metrics.leasesRecovered, expired.length))
      )
    ),
    Effect.catchAll((error) => Effect.logWarning(`recovery of expired leases failed: ${error.message}`)),
    Effect.repeat(Schedule.spaced(config.recoveryInterval)),
    Effect.annotateLogs("component", "recovery")
  )

const makeHandler = (
  config: ExecutorOptions,
  claimOptions: ClaimOptions,
  repository: ProgramRepository["Type"],
  queue: ProgramQueue["Type"],
  library: JobLibrary["Type"],
  events: ProgramEvents["Type"],
  durably: <A, E extends RepositoryError | QueueError, R>(
    what: string,
    operation: Effect.Effect<A, E, R>
  ) => Effect.Effect<A, E, R>,
  permits: Effect.Semaphore
) => {
  /** Publishes a wake-up; a failure is logged, never raised: the row is committed and the sweeper will find it. */
  const wake = (runId: string, step: number, delay?: Duration.Duration) =>
    durably(
      "publishing the next step",
      // Traced, the wake-up carries the current step's span: the step it wakes links to it (see `inStep`).
      Effect.flatMap(withTraceparent({ runId, step }), (message) =>
        queue.publish(message, delay === undefined ? {} : { delay }))
    ).pipe(
      Effect.catchAll((error) =>
        Effect.logError(`could not publish step ${step}; the sweeper will recover it: ${error.message}`)
      )
    )

  /**
   * A write that ends a run (advance, retry, fail), under the run's token. When an attempt failed without an answer
   * (the connection dropped after the statement was sent) and the retry is refused, the first attempt may have
   * committed: the row is read back, and if it still carries this run's token with its lease released, the write was
   * this run's own (a token is fresh at every claim, and a run ends its lease once), so it counts as done.
   */
  const settle = (what: string, lease: Lease, write: Effect.Effect<boolean, RepositoryError>) =>
    settleWith(
      what,
      lease,
      write,
      (applied) => applied,
      Option.exists((row) => row.leaseToken === lease.token && row.lockedBy === null)
    )

  /**
   * `settle` for any write: `applied` says whether its answer reports it done, `readBack` what the row read back
   * says when the answer was lost.
   */
  const settleWith = <A>(
    what: string,
    lease: Lease,
    write: Effect.Effect<A, RepositoryError>,
    applied: (answer: A) => boolean,
    readBack: (row: Option.Option<ProgramRecord>) => A
  ) =>
    Effect.suspend(() => {
      let unanswered = false
      return durably(what, Effect.tapError(write, () => Effect.sync(() => (unanswered = true)))).pipe(
        Effect.flatMap((answer) =>
          applied(answer) || !unanswered
            ? Effect.succeed(answer)
            : Effect.map(durably("reading the program back", repository.get(lease.runId)), readBack)
        )
      )
    })

  /**
   * Continuation's write (`advanceAndClaim`) under a token made here: when its answer was lost, the row read back
   * carrying that token (and still in progress) is the proof that it committed, and is the next step's claim.
   */
  const continueFrom = (lease: Lease) =>
    Effect.suspend(() => {
      const nextToken = randomUUID()
      return settleWith(
        "continuing to the next step",
        lease,
        repository.advanceAndClaim(lease, { ...claimOptions, nextToken }),
        Option.isSome,
        Option.filter((row) => row.leaseToken === nextToken && row.finishedAt === null && row.erroredAt === null)
      )
    })

  const jobContext = (program: ProgramRecord, entry: LeasedStep, jobName: string, startedAt: number): JobContextShape => {
    const lease = entry.lease
    const stored = program.jobData[jobName]
    let current: Record<string, any> = isPlainObject(stored) ? stored : {}
    // Writes of one run are serialized, so a merge never loses a concurrent merge of the same job; the lease keeps
    // every other worker away from this program.
    let lock: Effect.Semaphore | undefined // made by the first write: most jobs store nothing
    const serialized = <A, E, R>(write: Effect.Effect<A, E, R>) =>
      Effect.suspend(() => (lock ??= Effect.unsafeMakeSemaphore(1)).withPermits(1)(write))
    const store = (value: Record<string, any>) =>
      Effect.suspend(() => {
        if (entry.settled) {
          return Effect.fail(new RetryableError({ message: "job data not stored: this run is over (timed out or ended)" }))
        }
        return durably("storing job data", repository.writeJobData(lease, jobName, value)).pipe(
          Effect.mapError((error) =>
            isTransient(error)
              ? new RetryableError({ message: `job data could not be stored: ${error.message}`, cause: error })
              : new FatalError({ message: `job data cannot be stored: ${error.message}`, cause: error })
          ),
          Effect.flatMap((stored) =>
            stored
              ? Effect.sync(() => {
                current = value
              })
              : Effect.fail(new RetryableError({ message: "job data not stored: this worker lost the step's lease" }))
          )
        )
      })
    const merge = (partial: Record<string, any>) =>
      serialized(Effect.suspend(() => store({ ...current, ...partial })))
    return {
      runId: program.runId,
      step: program.step,
      jobName,
      jobs: program.jobs,
      attempt: attemptOf(program),
      programData: program.programData,
      jobData: {
        get: Effect.sync(() => current),
        set: (value) => serialized(store(value)),
        merge
      },
      checkpoint: (partial, options) =>
        Effect.gen(function*() {
          if (Object.keys(partial).length > 0) yield* merge(partial)
          const elapsed = (yield* Clock.currentTimeMillis) - startedAt
          const budget = Duration.toMillis(options.maxExecutionTime)
          if (elapsed > budget) {
            return yield* new ExecutionTimeExceededError({
              message: `execution time exceeded: ran ${elapsed} ms of a ${budget} ms budget`,
              elapsedMillis: elapsed,
              budgetMillis: budget
            })
          }
        })
    }
  }

  /**
   * The steps running here, by fencing token. One loop extends them all every heartbeat (rather than a watcher fiber
   * and a timer per step, which cost about a quarter of a step's CPU) and interrupts a job whose lease ended. An
   * extension that fails or does not answer within a heartbeat keeps the lease only until it would have expired by
   * this worker's clock: a hung connection must not keep a job running on the worker's word alone.
   */
  const leased = new Map<string, LeasedStep>()
  const extend = (entry: LeasedStep) =>
    Effect.flatMap(Clock.currentTimeMillis, (requestedAt) =>
      repository.extendLease(entry.lease, config.leaseDuration).pipe(
        Effect.timeoutFail({
          duration: config.heartbeatInterval,
          onTimeout: () => new RepositoryError({ message: "no answer within a heartbeat" })
        }),
        Effect.tap((status) =>
          status === "held" ? Effect.sync(() => (entry.heldUntil = requestedAt + leaseMillis)) : Effect.void
        ),
        Effect.catchAll((error) =>
          Effect.flatMap(Clock.currentTimeMillis, (now) =>
            // Given up one heartbeat before the lease would expire: the next check might come too late.
            now + heartbeatMillis < entry.heldUntil
              ? Effect.as(Effect.logWarning(`heartbeat failed: ${error.message}`), "held" as const)
              : Effect.as(
                Effect.logWarning(`heartbeat failed until the lease expired: ${error.message}`),
                "lost" as const
              ))
        ),
        Effect.flatMap((status) => {
          if (status === "held" || leased.get(keyOf(entry.lease)) !== entry) return Effect.void
          entry.ended = status
          return Effect.flatMap(Clock.currentTimeMillis, (now) => {
            entry.endedAt = now
            return entry.slot.handler === undefined ? Effect.void : Fiber.interruptFork(entry.slot.handler)
          })
        })
      ))
  const leaseMillis = Duration.toMillis(config.leaseDuration)
  const heartbeatMillis = Duration.toMillis(config.heartbeatInterval)

  /**
   * The latest due time among the steps started here, and when the last one started (this worker's clock). While
   * steps keep starting, the queue is being drained in order and that due time is its head: the sweeper leaves
   * alone the steps behind it (see `StaleQuery.queueHead`).
   */
  let headDueAt = 0
  let headSeenAt = -Infinity
  const staleMillis = Duration.toMillis(config.staleAfter)
  const queueHead = Effect.map(
    Clock.currentTimeMillis,
    (now) => now - headSeenAt <= staleMillis ? new Date(headDueAt) : undefined
  )
  const keepLeases = Effect.flatMap(Clock.currentTimeMillis, (now) =>
    Effect.forEach(
      Array.from(leased.values()),
      (entry) =>
        entry.ended === undefined
          ? extend(entry)
          // Interrupted a heartbeat ago and still running: it ignores interruption.
          : entry.endedAt !== undefined && now - entry.endedAt >= heartbeatMillis
          ? takeOver(entry.slot, entry.ended)
          : Effect.void,
      { concurrency: 8, discard: true }
    )).pipe(Effect.delay(config.heartbeatInterval), Effect.forever)

  /**
   * Runs the job, interruptible only while it runs (`restore`), and disconnected from the handler: when the handler
   * is interrupted (the heartbeat found the lease ended, a shutdown) or the timeout fires, it goes on at once, even
   * if the job ignores interruption (an uninterruptible region, a finalizer that hangs). Such a job is abandoned:
   * its slot is free, its lease no longer extended, and its writes refused. The heartbeat loop interrupts the
   * handler when the lease ends; shutdown interrupts it too, which gives the step back and ends the handling.
   */
  const runJob = (
    job: Job.Job,
    program: ProgramRecord,
    lease: Lease,
    slot: Slot,
    claimedAt: number,
    restore: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  ): Effect.Effect<Outcome> =>
    Effect.gen(function*() {
      const startedAt = yield* Clock.currentTimeMillis
      const timeout = job.options.timeout === undefined
        ? config.jobTimeout
        : Option.some(Duration.decode(job.options.timeout))
      const entry: LeasedStep = { lease, slot, heldUntil: claimedAt + leaseMillis, settled: false }
      const run = Effect.provideService(job.run, JobContext, jobContext(program, entry, job.name, startedAt))
      const body = Option.match(timeout, {
        onNone: () => run,
        // Disconnected, so the timeout fires at once even when the job ignores interruption: it goes on alone,
        // abandoned, its writes refused. (A timeout forks the job anyway; without one the job stays on this fiber.)
        onSome: (duration) =>
          Effect.timeoutFail(Effect.disconnect(run), {
            duration,
            onTimeout: () => new RetryableError({ message: `timed out after ${Duration.format(duration)}` })
          })
      })
      leased.set(keyOf(lease), entry)
      slot.step = entry
      const exit = yield* Effect.exit(restore(body))
      entry.settled = true
      slot.step = undefined
      leased.delete(keyOf(lease))
      // The heartbeat's interruption stays on this fiber; what follows is uninterruptible bookkeeping (release, ack),
      // so it ends nothing else. An adapter must not rely on `Effect.interruptible` inside an ack for that reason.
      if (entry.ended !== undefined) return { _tag: "LeaseEnded", status: entry.ended }
      // Interrupted from outside, not by the heartbeat: shutting down. (A job interrupting itself is a failure like
      // any other.) Give the step back so it runs again, here or on another worker.
      if (Exit.isInterrupted(exit) && HashSet.size((yield* Effect.descriptor).interruptors) > 0) {
        yield* repository.release(lease).pipe(Effect.ignore, Effect.zipRight(slot.delivery.nack))
        return yield* Effect.interrupt
      }
      yield* Metric.update(metrics.jobDuration, ((yield* Clock.currentTimeMillis) - startedAt) / 1000)
      return { _tag: "Completed", exit }
    })

  /**
   * The step completed: move the program on. When the chain may go on (`mayContinue`: the caller's count of
   * consecutive steps), no shutdown has begun and the next job is in this worker's library, the advance also claims
   * the next step (continuation, DESIGN.md 3b), which is returned to run here at once; otherwise the next step is
   * woken through the queue. The caller acks the message.
   */
  const advance = (
    program: ProgramRecord,
    lease: Lease,
    job: string,
    startedAt: number,
    mayContinue: boolean
  ): Effect.Effect<Continuation | undefined, RepositoryError> =>
    Effect.gen(function*() {
      const finished = program.step + 1 >= program.jobs.length
      const nextJob = program.jobs[program.step + 1]
      let next: Continuation | undefined
      if (mayContinue && !finished && !stopping && nextJob !== undefined && library.get(nextJob) !== undefined) {
        const claimedAt = yield* Clock.currentTimeMillis
        const claimed = yield* continueFrom(lease)
        if (Option.isNone(claimed)) {
          return yield* Effect.as(refused(lease, "the step's completion"), undefined)
        }
        next = { program: claimed.value, claimedAt }
      } else {
        const advanced = yield* settle("advancing the step", lease, repository.advance(lease, { finished }))
        if (!advanced) {
          return yield* Effect.as(refused(lease, "the step's completion"), undefined)
        }
      }
      const duration = Duration.millis((yield* Clock.currentTimeMillis) - startedAt)
      yield* events.publish(
        ProgramEvent.StepFinished({
          runId: program.runId,
          step: program.step,
          job,
          attempt: attemptOf(program),
          duration
        })
      )
      yield* Metric.increment(metrics.stepsCompleted)
      if (finished) {
        yield* Metric.increment(metrics.programsFinished)
        yield* events.publish(ProgramEvent.ProgramFinished({ runId: program.runId }))
        yield* Effect.logDebug("program finished")
      } else if (next === undefined) {
        yield* wake(program.runId, program.step + 1)
      } else {
        yield* Metric.increment(metrics.stepsContinued)
      }
      return next
    })

  const stop = (program: ProgramRecord, lease: Lease, job: string, failure: Failure & { _tag: "Ignore" | "Fatal" }) =>
    Effect.gen(function*() {
      const recorded = yield* settle("recording the failure", lease, repository.fail(lease, failure.message))
      if (!recorded) return yield* refused(lease, "the failure")
      const ignorable = failure._tag === "Ignore"
      yield* Metric.increment(metrics.programsErrored)
      yield* events.publish(
        ProgramEvent.ProgramErrored({
          runId: program.runId,
          step: program.step,
          job,
          errorMessage: failure.message,
          ignorable
        })
      )
      if (ignorable) {
        yield* Effect.logInfo(`program stopped by an ignorable error: ${failure.message}`)
      } else {
        // The old library's event name, kept so existing alerts still match.
        yield* Effect.logError(`program errored: ${failure.message}`, failure._tag === "Fatal" ? failure.cause : "")
          .pipe(Effect.annotateLogs("event", "Consumer error finish"))
      }
    })

  /**
   * A write recording a run's outcome was refused. When the program was cancelled meanwhile (its job completed
   * before a heartbeat saw the cancel, or a continuation was refused for it) the lease is still this run's: it is
   * released, as a cancel seen by the heartbeat releases it, rather than left on an errored row. Otherwise the lease
   * was lost: the run counts as lost and the step runs again elsewhere.
   */
  const refused = (lease: Lease, what: string) =>
    durably("reading the program back", repository.get(lease.runId)).pipe(
      Effect.flatMap((row) =>
        Option.exists(row, (program) => program.erroredAt !== null && program.leaseToken === lease.token)
          ? Effect.logInfo(`program was cancelled while its job ran; ${what} is not recorded`).pipe(
            Effect.zipRight(repository.release(lease).pipe(Effect.ignore)),
            Effect.annotateLogs("event", "execution-cancelled")
          )
          : Effect.logWarning(`lease lost before ${what} could be recorded; another worker will run the step again`)
      ),
      Effect.catchAll((error) => Effect.logWarning(`lease lost or program cancelled before ${what} could be recorded: ${error.message}`))
    )

  const fatal = (message: string) => ({ _tag: "Fatal", message, cause: Cause.empty }) as const

  const retry = (
    program: ProgramRecord,
    lease: Lease,
    job: Job.Job | undefined,
    failure: Failure & { _tag: "Retry" }
  ) =>
    Effect.gen(function*() {
      // Lost runs count as attempts too: `maxAttempts` bounds every run of the step that did not complete.
      const failures = program.stepRetryCount + program.stepLostCount + (failure.countAttempt ? 1 : 0)
      const maxAttempts = job?.options.maxAttempts ?? config.maxAttempts
      const jobName = job?.name ?? ""
      if (failures >= maxAttempts) {
        return yield* stop(program, lease, jobName, fatal(`gave up after ${failures} attempt(s): ${failure.message}`))
      }
      const delay = yield* nthDelay(job?.options.retrySchedule ?? config.retrySchedule, Math.max(1, failures))
      if (Option.isNone(delay)) {
        return yield* stop(
          program,
          lease,
          jobName,
          fatal(`retry schedule exhausted after ${failures} attempt(s): ${failure.message}`)
        )
      }
      const recorded = yield* settle(
        "recording the retry",
        lease,
        repository.scheduleRetry(lease, {
          errorMessage: failure.message,
          delay: delay.value,
          countAttempt: failure.countAttempt
        })
      )
      if (!recorded) return yield* refused(lease, "the retry")
      yield* Metric.increment(metrics.stepsRetried)
      yield* events.publish(
        ProgramEvent.RetryScheduled({
          runId: program.runId,
          step: program.step,
          job: jobName,
          attempt: attemptOf(program),
          delay: delay.value,
          errorMessage: failure.message
        })
      )
      yield* Effect.logWarning(`step will be retried in ${Duration.format(delay.value)}: ${failure.message}`).pipe(
        Effect.annotateLogs("event", "Consumer error retry")
      )
      yield* wake(program.runId, program.step, delay.value)
    })

  /**
   * Why a claimed step must not run again, or undefined: its earlier runs were lost (the worker died, exited or lost
   * the lease) more often than `maxLostRuns`, or, with the failures recorded, `maxAttempts` runs did not complete.
   */
  const exhausted = (program: ProgramRecord, job: Job.Job | undefined, jobName: string): string | undefined => {
    const lost = program.stepLostCount
    if (lost === 0) return undefined
    const maxAttempts = job?.options.maxAttempts ?? config.maxAttempts
    const runs = program.stepRetryCount + lost
    const bound = lost > config.maxLostRuns
      ? `more than maxLostRuns (${config.maxLostRuns})`
      : runs >= maxAttempts
      ? `${runs} run(s) without completing, maxAttempts ${maxAttempts}`
      : undefined
    return bound === undefined
      ? undefined
      : `worker lost ${lost} time(s) running job "${jobName}" (${bound}): the job may crash its process (exit, out ` +
        `of memory) or outlive its lease`
  }

  /**
   * Runs one claimed step. Only the job itself is interruptible; what it completed is always recorded. Returns the
   * next step when it was claimed by continuation (see `advance`). `delivered`: the step came from the queue (not by
   * continuation), so its due time tells where the queue's head is.
   */
  const runStep = (
    program: ProgramRecord,
    slot: Slot,
    claimedAt: number,
    restore: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>,
    delivered: boolean,
    mayContinue: boolean,
    trace: StepTrace
  ): Effect.Effect<Continuation | void, RepositoryError> =>
    Effect.gen(function*() {
      const lease: Lease = { runId: program.runId, step: program.step, token: program.leaseToken ?? "" }
      const jobName = program.jobs[program.step]
      if (program.corruption !== null || jobName === undefined) {
        const message = program.corruption ?? `step ${program.step} is past the last of ${program.jobs.length} job(s)`
        return yield* stop(program, lease, jobName ?? "", fatal(message))
      }
      const job = library.get(jobName)
      const lostTooOften = exhausted(program, job, jobName)
      if (lostTooOften !== undefined) return yield* stop(program, lease, jobName, fatal(lostTooOften))
      const startedAt = yield* Clock.currentTimeMillis
      yield* Metric.update(metrics.queueLag, Math.max(0, startedAt - program.nextRunAt.getTime()) / 1000)
      if (delivered) {
        headDueAt = Math.max(headDueAt, program.nextRunAt.getTime())
        headSeenAt = startedAt
      }
      if (job === undefined) {
        if (config.onUnknownJob === "skip") {
          yield* Effect.logWarning(`job "${jobName}" is not in this worker's library: skipped`).pipe(
            Effect.annotateLogs("event", "job-skipped")
          )
          return yield* advance(program, lease, jobName, startedAt, mayContinue)
        }
        return yield* stop(
          program,
          lease,
          jobName,
          fatal(`unknown job "${jobName}": this worker's library has ${library.names.join(", ") || "no jobs"}`)
        )
      }
      yield* events.publish(
        ProgramEvent.StepStarted({ runId: program.runId, step: program.step, job: jobName, attempt: attemptOf(program) })
      )
      const outcome = yield* runJob(job, program, lease, slot, claimedAt, restore)
      if (outcome._tag === "LeaseEnded") {
        return yield* outcome.status === "cancelled"
          ? Effect.logInfo("program was cancelled while its job ran; job interrupted").pipe(
            Effect.zipRight(repository.release(lease).pipe(Effect.ignore)),
            Effect.annotateLogs("event", "execution-cancelled")
          )
          : Effect.logWarning("lease lost while the job ran (another worker took the step); job interrupted")
      }
      if (Exit.isSuccess(outcome.exit)) return yield* advance(program, lease, jobName, startedAt, mayContinue)
      const failure = classify(outcome.exit.cause)
      return yield* failure._tag === "Retry"
        ? retry(program, lease, job, failure)
        : stop(program, lease, jobName, failure)
    }).pipe(
      // The database refused to record the outcome for its data (text it cannot store, a value out of range): the
      // same write would be refused forever, so the program fails with the database's message instead.
      Effect.catchIf(
        (error): error is RepositoryError => error._tag === "RepositoryError" && !isTransient(error),
        (error) =>
          stop(
            program,
            { runId: program.runId, step: program.step, token: program.leaseToken ?? "" },
            program.jobs[program.step] ?? "",
            fatal(`the database refused to record the step's outcome: ${error.message}`)
          )
      ),
      inStep(program, trace)
    )

  /** A wake-up that can never run a step: acknowledged, logged with its content and counted, never retried. */
  const poison = (delivery: Delivery, why: string) =>
    Effect.logError(`poison wake-up dropped (${why}): ${safeJson(delivery.message)}`).pipe(
      Effect.annotateLogs("event", "wake-up-poison"),
      Effect.zipRight(Metric.increment(metrics.wakeUpsPoisoned)),
      Effect.zipRight(delivery.ack)
    )

  const handle = (slot: Slot): Effect.Effect<void> => {
    const delivery = slot.delivery
    return Effect.uninterruptibleMask((restore) =>
      Effect.gen(function*() {
        // On the handler's own fiber, for good (see `inStep`): every log of this delivery names its step.
        yield* FiberRef.update(FiberRef.currentLogAnnotations, (annotations) =>
          HashMap.mutate(annotations, (mutable) => {
            HashMap.set(mutable, "runId", delivery.message.runId)
            HashMap.set(mutable, "step", delivery.message.step)
          }))
        if (!isValidWakeUp(delivery.message.runId, delivery.message.step)) {
          return yield* poison(delivery, "no program can have this runId and step")
        }
        // When the lease began, by this worker's clock: the claim's request, or for a step the queue claimed for us,
        // the oldest such a claim may be (see `Delivery.claimed`).
        const claimedAt = (yield* Clock.currentTimeMillis) - (Option.isSome(delivery.claimed) ? leaseMillis / 3 : 0)
        const claimed = Option.isSome(delivery.claimed)
          ? delivery.claimed
          : yield* durably("claiming the step", repository.claim(delivery.message, claimOptions))
        if (Option.isNone(claimed)) {
          // Duplicate, stale, early, cancelled or finished: never executed.
          yield* Metric.increment(metrics.wakeUpsDropped)
          return yield* delivery.ack
        }
        // A chain: each step continued from the one before, at most `maxConsecutiveSteps` on this delivery.
        let step: Continuation = { program: claimed.value, claimedAt }
        const trace: StepTrace = { traceparent: delivery.message.traceparent, previous: undefined }
        for (let left = config.maxConsecutiveSteps - 1;; left--) {
          const next = yield* runStep(
            step.program,
            slot,
            step.claimedAt,
            restore,
            step.program === claimed.value,
            left > 0,
            trace
          )
          if (next === undefined) break
          slot.delivery = continued(slot.delivery, next.program)
          step = next
        }
        yield* slot.delivery.ack
      }).pipe(
        Effect.catchAllCause((cause) => {
          if (Cause.isInterruptedOnly(cause)) return Effect.interrupt
          const failure = Cause.failureOption(cause)
          if (Option.isSome(failure) && failure.value._tag === "RepositoryError" && !isTransient(failure.value)) {
            return poison(slot.delivery, `the database refused it: ${failure.value.message}`)
          }
          return Effect.logError("could not handle a wake-up; returning it to the queue", cause).pipe(
            Effect.zipRight(slot.delivery.nack)
          )
        })
      )
    )
  }

  /** The deliveries being handled; a shutdown waits for this to empty. */
  const running = new Set<Slot>()
  let drained: Deferred.Deferred<void> | undefined
  /** Set when a shutdown begins: chains stop at their current step, and the next one goes back to the queue. */
  let stopping = false

  /**
   * The stand-in delivery of a step claimed by continuation. The message that began the chain stays unacked until the
   * chain ends, so the queue still counts the slot as busy (the SQL queue would otherwise claim rows ahead for it):
   * acking the stand-in acks that message. No message carries this step, so giving it back (an interrupted step, a
   * shutdown, a handling that failed) acks that message too and publishes this step's wake-up.
   */
  const continued = (origin: Delivery, program: ProgramRecord): Delivery =>
    once({
      message: { runId: program.runId, step: program.step },
      claimed: Option.some(program),
      ack: origin.ack,
      nack: Effect.zipRight(origin.ack, republish(program.runId, program.step))
    })

  /**
   * Publishes a given-back step's wake-up from a fiber of its own, waiting for it at most `shutdownMargin`. Giving back
   * happens on a handler that a shutdown has interrupted: there an adapter's interruptible publish (the AMQP confirm's
   * timeout) would be interrupted at once, and nothing else can bound the wait. Not published in time (a broker down
   * at shutdown), the step is recovered by the sweeper: its lease is released already.
   */
  const republish = (runId: string, step: number) =>
    Effect.flatMap(Effect.forkDaemon(wake(runId, step)), (fiber) =>
      Effect.async<void>((resume) => {
        let resumed = false
        const done = () => {
          if (resumed) return
          resumed = true
          clearTimeout(timer)
          resume(Effect.void)
        }
        const timer = setTimeout(done, Duration.toMillis(shutdownMargin))
        fiber.addObserver(done)
      }))

  const free = (slot: Slot) =>
    Effect.suspend(() => {
      if (slot.freed) return Effect.void
      slot.freed = true
      running.delete(slot)
      if (running.size === 0 && drained !== undefined) Deferred.unsafeDone(drained, Exit.void)
      return permits.release(1)
    })

  /** Settles a message once: the handler and a takeover may both try. */
  const once = (delivery: Delivery): Delivery => {
    let settled = false
    const settle = (how: Effect.Effect<void>) =>
      Effect.suspend(() => {
        if (settled) return Effect.void
        settled = true
        return how
      })
    return { ...delivery, ack: settle(delivery.ack), nack: settle(delivery.nack) }
  }

  /** Handles a delivery on a fiber of its own (the caller holds a permit for it, freed when the handling ends). */
  const dispatch = (delivery: Delivery) =>
    Effect.suspend(() => {
      const slot: Slot = { delivery: once(delivery), handler: undefined, step: undefined, freed: false }
      running.add(slot)
      return Effect.map(Effect.forkDaemon(Effect.ensuring(handle(slot), free(slot))), (fiber) => {
        slot.handler = fiber
      })
    })

  /**
   * A handler whose job ignored its interruption: its step released (cancelled, shutdown) or left to whoever holds
   * it now (lost), its message settled, its slot freed. The stuck fiber is left behind; nothing it does counts.
   */
  const takeOver = (slot: Slot, reason: Exclude<LeaseStatus, "held"> | "shutdown") =>
    Effect.suspend(() => {
      if (slot.freed) return Effect.void
      const step = slot.step
      if (step !== undefined) {
        step.settled = true
        leased.delete(keyOf(step.lease))
      }
      const release = step === undefined || reason === "lost"
        ? Effect.void
        : repository.release(step.lease).pipe(Effect.timeout(config.heartbeatInterval), Effect.ignore)
      return release.pipe(
        Effect.zipRight(reason === "shutdown" ? slot.delivery.nack : slot.delivery.ack),
        Effect.zipRight(
          Effect.logError(`a job ignored its interruption (${reason}): its slot is freed, the job left behind`).pipe(
            Effect.annotateLogs({ runId: slot.delivery.message.runId, step: slot.delivery.message.step })
          )
        ),
        Effect.zipRight(free(slot))
      )
    })

  /**
   * Lets the running steps finish within the grace period, then interrupts them and, after `shutdownMargin`, takes
   * over those that ignore it: the worker stops within `shutdownGrace + shutdownMargin` (plus a release per step).
   */
  const shutdown = Effect.gen(function*() {
    stopping = true
    if (running.size === 0) return
    const empty = yield* Deferred.make<void>()
    drained = empty
    // Finalizers run uninterruptibly; the waits must be interruptible for their timeouts to end them.
    const awaitEmpty = (within: Duration.Duration) =>
      Effect.interruptible(Deferred.await(empty)).pipe(Effect.timeout(within), Effect.option, Effect.map(Option.isSome))
    if (!Duration.isZero(config.shutdownGrace)) {
      yield* Effect.logInfo(`shutting down: waiting for ${running.size} running step(s)`)
      if (yield* awaitEmpty(config.shutdownGrace)) return
      yield* Effect.logWarning(`shutdown grace elapsed: interrupting ${running.size} step(s)`)
    }
    for (const slot of running) if (slot.handler !== undefined) yield* Fiber.interruptFork(slot.handler)
    if (yield* awaitEmpty(shutdownMargin)) return
    yield* Effect.forEach(Array.from(running), (slot) => takeOver(slot, "shutdown"), { discard: true })
  })

  const beginShutdown = Effect.sync(() => {
    stopping = true
  })

  return { beginShutdown, dispatch, keepLeases, queueHead, shutdown }
}

const safeJson = (value: unknown) => {
  try {
    return JSON.stringify(value)
  } catch {
    return String(value)
  }
}
