/**
 * The executor against a storage that fails at the worst moments, through the test kit on `TestClock`: an answer
 * lost after a write committed (the read-back in `settle`), a write refused for its data, a claim that keeps failing
 * (returned to the queue, not poison) or is refused (poison), a heartbeat that fails once. Each test was seen failing
 * with the guard it is named after mutated (Stryker, see docs/mutation-scores.md).
 */
import { describe, expect, it } from "@effect/vitest"
import {
  type ExecutorConfig,
  Job,
  JobContext,
  type Lease,
  ProgramEvents,
  ProgramExecutor,
  ProgramExecutorTest,
  ProgramQueue,
  ProgramRepository,
  RepositoryError
} from "@program-executor/core"
import { Clock, Context, Deferred, Duration, Effect, Layer, Metric, Option, Ref, Schedule, Stream } from "effect"
import { recordingQueue, type Settlement, settlementsOf } from "./utils/recordingQueue.js"

type Repository = ProgramRepository["Type"]

/** The memory storage with its repository decorated; given `settled`, the queue records the worker's acks and nacks. */
const storageWith = (decorate: (repository: Repository) => Repository, settled?: Array<Settlement>) =>
  Layer.map(
    Layer.merge(ProgramRepository.layerMemory, ProgramQueue.layerMemory),
    (context) => {
      const decorated = Context.add(context, ProgramRepository, decorate(Context.get(context, ProgramRepository)))
      return settled === undefined
        ? decorated
        : Context.add(decorated, ProgramQueue, recordingQueue(Context.get(context, ProgramQueue), settled))
    }
  )

/**
 * Runs a program of `jobs` to its end; returns its row, the steps of its StepFinished events, its ProgramFinished
 * events, the step of each run and its attempt.
 */
const runWith = (
  jobs: ReadonlyArray<string>,
  decorate: (repository: Repository) => Repository,
  config: Partial<ExecutorConfig.ExecutorOptions> = {},
  settled?: Array<Settlement>
) =>
  Effect.gen(function*() {
    const runs = yield* Ref.make<ReadonlyArray<number>>([])
    const attempts = yield* Ref.make<ReadonlyArray<number>>([])
    const finished = yield* Ref.make<ReadonlyArray<number>>([])
    const programsFinished = yield* Ref.make<ReadonlyArray<string>>([])
    const job = (name: string) => Job.make(name, Effect.void)
    const counted = Job.make(
      "counted",
      Effect.flatMap(JobContext, (ctx) =>
        Effect.zipRight(
          Ref.update(runs, (all) => [...all, ctx.step]),
          Ref.update(attempts, (all) => [...all, ctx.attempt])
        ))
    )
    const program = yield* Effect.gen(function*() {
      const events = yield* ProgramEvents.subscribe
      yield* events.pipe(
        Stream.runForEach((event) =>
          event._tag === "StepFinished"
            ? Ref.update(finished, (all) => [...all, event.step])
            : event._tag === "ProgramFinished"
            ? Ref.update(programsFinished, (all) => [...all, event.runId])
            : Effect.void
        ),
        Effect.forkScoped
      )
      const runId = yield* ProgramExecutor.createProgram({ jobs })
      const programs = yield* ProgramExecutorTest.runUntilIdle()
      return programs.find((program) => program.runId === runId)!
    }).pipe(
      Effect.provide(ProgramExecutorTest.layer({
        jobs: [counted, job("quick")],
        storage: storageWith(decorate, settled),
        // No sweep or recovery within a test: a step that runs again was woken by the executor itself. One step per
        // message: these tests are about `advance` and its read-back (continuation's write is `advanceAndClaim`).
        config: { staleAfter: Duration.hours(1), sweepInterval: Duration.hours(1), maxConsecutiveSteps: 1, ...config }
      })),
      Effect.scoped
    )
    return {
      program,
      finished: yield* Ref.get(finished),
      programsFinished: yield* Ref.get(programsFinished),
      runs: yield* Ref.get(runs),
      attempts: yield* Ref.get(attempts)
    }
  })

/** `advance` behaves as `first` on its first call, then as the repository's own. */
const firstAdvance = (first: (repository: Repository, lease: Lease) => Effect.Effect<boolean, RepositoryError>) =>
(repository: Repository): Repository => {
  let calls = 0
  return {
    ...repository,
    advance: (lease, options) =>
      Effect.suspend(() => calls++ === 0 ? first(repository, lease) : repository.advance(lease, options))
  }
}

/** `advanceAndClaim` (continuation's write) behaves as `first` on its first call, then as the repository's own. */
const firstAdvanceAndClaim = (first: Repository["advanceAndClaim"]) => (repository: Repository): Repository => {
  let calls = 0
  return {
    ...repository,
    advanceAndClaim: (lease, options) =>
      Effect.suspend(() => calls++ === 0 ? first(lease, options) : repository.advanceAndClaim(lease, options))
  }
}

const dropped = new RepositoryError({ message: "connection reset after the statement was sent" })

/** Another worker takes the step meanwhile: this run's lease released, the step claimed under the other's token. */
const takenByAnotherWorker = (repository: Repository, lease: Lease) =>
  Effect.zipRight(
    repository.release(lease),
    repository.claim(lease, { owner: "other-worker", leaseFor: Duration.seconds(1) })
  )

describe("executor against a failing storage", () => {
  it.effect("settle: an advance that committed but whose answer was lost counts as done (read back by its token)", () =>
    Effect.gen(function*() {
      const { finished, program, runs } = yield* runWith(
        ["counted", "counted"],
        firstAdvance((repository, lease) =>
          Effect.zipRight(repository.advance(lease, { finished: false }), Effect.fail(dropped)))
      )
      expect(program.finishedAt).not.toBeNull()
      expect(runs).toEqual([0, 1])
      expect(finished).toEqual([0, 1])
    }))

  it.effect("settle: an advance that did not commit, the step taken by another worker meanwhile, is not counted", () =>
    Effect.gen(function*() {
      const { finished, program, runs } = yield* runWith(
        ["counted", "counted"],
        firstAdvance((repository, lease) =>
          // Another worker takes the step (its own claim, its own token), then the answer is lost.
          Effect.zipRight(takenByAnotherWorker(repository, lease), Effect.fail(dropped))),
        { recoveryInterval: Duration.seconds(1) }
      )
      expect(program.finishedAt).not.toBeNull()
      // Step 0 ran again once the other worker's lease expired; only that run finished it.
      expect(runs).toEqual([0, 0, 1])
      expect(finished).toEqual([0, 1])
    }))

  it.effect("an outcome the database refuses for its data fails the program with the database's message", () =>
    Effect.gen(function*() {
      const { program, runs } = yield* runWith(
        ["counted", "counted"],
        firstAdvance(() => Effect.fail(new RepositoryError({ message: "value too long", transient: false })))
      )
      expect(program.erroredAt).not.toBeNull()
      expect(program.step).toBe(0)
      expect(program.errorMessage).toBe("the database refused to record the step's outcome: value too long")
      expect(runs).toEqual([0])
    }))

  it.effect("a claim failing past the storage retry returns the wake-up to the queue; one the database refuses is poison", () =>
    Effect.gen(function*() {
      const poisoned = Metric.counter("program_executor_wakeups_poisoned_total", { incremental: true })
      const claims = new Map<string, number>()
      const decorate = (repository: Repository): Repository => ({
        ...repository,
        claim: (target, options) =>
          Effect.suspend(() => {
            const n = (claims.get(target.runId) ?? 0) + 1
            claims.set(target.runId, n)
            return n <= 2 ? Effect.fail(new RepositoryError({ message: "connection refused" })) : repository.claim(target, options)
          })
      })
      const before = (yield* Metric.value(poisoned)).count
      const { program } = yield* runWith(["counted"], decorate, { storageRetry: Schedule.recurs(0) })
      // Nacked twice and delivered again at once, not dropped and left to the sweeper (an hour away).
      expect(program.finishedAt).not.toBeNull()
      expect(program.finishedAt!.getTime() - program.createdAt.getTime()).toBeLessThan(60_000)
      expect(claims.get(program.runId)).toBe(3)
      expect((yield* Metric.value(poisoned)).count - before).toBe(0)
      const refusing = (repository: Repository): Repository => ({
        ...repository,
        claim: (target) =>
          Effect.suspend(() => {
            claims.set(target.runId, (claims.get(target.runId) ?? 0) + 1)
            return Effect.fail(new RepositoryError({ message: "invalid input syntax", transient: false }))
          })
      })
      // The refused one: acked as poison, claimed once, not delivered again (only the sweeper, an hour on, would).
      const refused = yield* Effect.gen(function*() {
        const runId = yield* ProgramExecutor.createProgram({ jobs: ["quick"] })
        yield* ProgramExecutorTest.runUntilIdle({ maxRounds: 5 }).pipe(Effect.ignore)
        return runId
      }).pipe(
        Effect.provide(ProgramExecutorTest.layer({
          jobs: [Job.make("quick", Effect.void)],
          storage: storageWith(refusing),
          config: { staleAfter: Duration.hours(1), sweepInterval: Duration.hours(1) }
        })),
        Effect.scoped
      )
      expect([claims.get(refused), (yield* Metric.value(poisoned)).count - before]).toEqual([1, 1])
    }))

  it.effect("a heartbeat that fails once, long before the lease would expire, leaves the job running", () =>
    Effect.gen(function*() {
      let failed = 0
      const decorate = (repository: Repository): Repository => ({
        ...repository,
        extendLease: (lease, leaseFor) =>
          Effect.suspend(() =>
            failed++ === 0 ? Effect.fail(new RepositoryError({ message: "timeout" })) : repository.extendLease(lease, leaseFor)
          )
      })
      const runs = yield* Ref.make(0)
      const long = Job.make("long", Effect.zipRight(Ref.update(runs, (n) => n + 1), Effect.sleep("5 seconds")))
      const program = yield* ProgramExecutorTest.runProgram({ jobs: ["long"] }, {
        jobs: [long],
        storage: storageWith(decorate),
        config: { leaseDuration: Duration.seconds(30), heartbeatInterval: Duration.seconds(1) }
      })
      expect(program.finishedAt).not.toBeNull()
      expect(failed).toBeGreaterThan(1)
      expect(yield* Ref.get(runs)).toBe(1)
    }))

  it.effect("settle: an advance refused on its retry because the lease expired unclaimed is not counted (the token still locks the row)", () =>
    Effect.gen(function*() {
      const { attempts, finished, program, runs } = yield* runWith(
        ["counted", "counted"],
        // Not committed, no answer; the retry comes after the lease (30 s) expired, before the recoverer's next round.
        firstAdvance(() => Effect.fail(dropped)),
        {
          storageRetry: Schedule.addDelay(Schedule.recurs(1), () => Duration.seconds(31)),
          recoveryInterval: Duration.minutes(10)
        }
      )
      expect(program.finishedAt).not.toBeNull()
      // The lost run of step 0 ran again once its lease was recovered; it was never counted as finished, and its
      // lease was not released (a lost run, not a cancel): the next claim counted it, attempt 2.
      expect(runs).toEqual([0, 0, 1])
      expect(attempts).toEqual([1, 2, 1])
      expect(finished).toEqual([0, 1])
    }))

  it.effect("settle: an advance whose answer was lost, the step since claimed and released by another worker, is not counted", () =>
    Effect.gen(function*() {
      const { finished, program, runs } = yield* runWith(
        ["counted", "counted"],
        firstAdvance((repository, lease) =>
          // Not committed: another worker claims the step and gives it back (its own token, released), then the
          // answer is lost. The row read back is released, under a token that is not this run's.
          takenByAnotherWorker(repository, lease).pipe(
            Effect.flatMap(Option.match({
              onNone: () => Effect.die("the other worker could not claim the step"),
              onSome: (other) => repository.release({ ...lease, token: other.leaseToken ?? "" })
            })),
            Effect.zipRight(Effect.fail(dropped))
          )),
        // Only the sweeper wakes a step given back without a wake-up: a minute rather than the hour of the others.
        { staleAfter: Duration.minutes(1), sweepInterval: Duration.seconds(30) }
      )
      expect(program.finishedAt).not.toBeNull()
      // Step 0 ran again once the sweeper found it; only that run finished it.
      expect(runs).toEqual([0, 0, 1])
      expect(finished).toEqual([0, 1])
    }))

  it.effect("an outcome the storage cannot record past the storage retry returns the wake-up to the queue; the program does not fail", () =>
    Effect.gen(function*() {
      const settled: Array<Settlement> = []
      const { finished, program, runs } = yield* runWith(
        ["counted", "counted"],
        firstAdvance(() => Effect.fail(new RepositoryError({ message: "connection refused" }))),
        { storageRetry: Schedule.recurs(0) },
        settled
      )
      expect(program.errorMessage).toBeNull()
      expect(program.finishedAt).not.toBeNull()
      // Given back, then run again once its lease expired (the run that could not record its outcome is lost).
      expect(settlementsOf(settled, program.runId)[0]).toEqual({ runId: program.runId, step: 0, how: "nack" })
      expect(runs).toEqual([0, 0, 1])
      expect(finished).toEqual([0, 1])
    }))

  /**
   * The first run's lease extensions after its first `answered` ones fail as `failure` does (the database unreachable
   * from this worker); later runs' succeed.
   */
  const failingFirstLease = (
    answered = 0,
    failure: Effect.Effect<never, RepositoryError> = Effect.fail(new RepositoryError({ message: "connection refused" }))
  ) =>
  (repository: Repository): Repository => {
    let first: string | undefined
    let calls = 0
    return {
      ...repository,
      extendLease: (lease, leaseFor) =>
        Effect.suspend(() => {
          first ??= lease.token
          return lease.token === first && ++calls > answered ? failure : repository.extendLease(lease, leaseFor)
        })
    }
  }
  /** A job whose first run waits until interrupted; returns when that run started and was interrupted, and attempts. */
  const interruptedOnce = () => {
    const attempts: Array<number> = []
    const times: { started?: number; interrupted?: number } = {}
    const job = Job.make(
      "long",
      Effect.flatMap(JobContext, (ctx) => {
        attempts.push(ctx.attempt)
        if (ctx.attempt > 1) return Effect.void
        return Effect.flatMap(Clock.currentTimeMillis, (now) => {
          times.started = now
          return Effect.never.pipe(
            Effect.onInterrupt(() => Effect.map(Clock.currentTimeMillis, (at) => (times.interrupted = at)))
          )
        })
      })
    )
    return { attempts, job, ranFor: () => times.interrupted! - times.started! }
  }
  const leaseConfig = {
    leaseDuration: Duration.seconds(30),
    heartbeatInterval: Duration.seconds(1),
    staleAfter: Duration.hours(1),
    sweepInterval: Duration.hours(1),
    // Past the first lease's expiry: the lost run's step is recovered well after the events under test.
    recoveryInterval: Duration.minutes(1),
    concurrency: 1
  }

  /** Runs a long job whose first lease the heartbeat cannot keep (`lease`); how long it ran before it was given up. */
  const givenUpAfter = (lease: ReturnType<typeof failingFirstLease>) =>
    Effect.gen(function*() {
      const { attempts, job, ranFor } = interruptedOnce()
      const program = yield* ProgramExecutorTest.runProgram({ jobs: ["long"] }, {
        jobs: [job],
        storage: storageWith(lease),
        config: leaseConfig
      })
      expect(program.finishedAt).not.toBeNull()
      // Given up once, run again (attempt 2: the first run counts as lost) to the end.
      expect(attempts).toEqual([1, 2])
      return ranFor()
    })

  it.effect("a heartbeat failing every extension interrupts the job exactly one heartbeat before its lease expires; the run counts as lost", () =>
    // Lease 30 s from the claim, heartbeat 1 s: given up at 29 s, neither at 30 s nor later.
    Effect.map(givenUpAfter(failingFirstLease()), (ran) => expect(ran).toBe(29_000)))

  it.effect("a heartbeat failing after ten extensions gives up one heartbeat before the lease the last one extended expires", () =>
    // The last extension, requested at 10 s, held the lease until 40 s: given up at 39 s.
    Effect.map(givenUpAfter(failingFirstLease(10)), (ran) => expect(ran).toBe(39_000)))

  it.effect("a heartbeat whose extensions never answer counts each as failed after a heartbeat and gives the job up", () =>
    // Each extension, requested at 1 s, 3 s, …, times out a heartbeat later; the one timing out at 30 s gives up.
    Effect.map(givenUpAfter(failingFirstLease(0, Effect.never)), (ran) => expect(ran).toBe(30_000)))

  it.effect("a job ignoring its interruption after its lease was lost is taken over: its message acked, its lease left to expire (the run counts as lost)", () =>
    Effect.gen(function*() {
      const gate = yield* Deferred.make<void>()
      const attempts: Array<number> = []
      const job = Job.make(
        "stubborn",
        Effect.flatMap(JobContext, (ctx) => {
          attempts.push(ctx.attempt)
          return ctx.attempt > 1 ? Effect.void : Effect.uninterruptible(Deferred.await(gate))
        })
      )
      const settled: Array<Settlement> = []
      const program = yield* ProgramExecutorTest.runProgram({ jobs: ["stubborn"] }, {
        jobs: [job],
        storage: storageWith(failingFirstLease(), settled),
        config: leaseConfig
      }).pipe(Effect.ensuring(Deferred.succeed(gate, undefined)))
      expect(program.finishedAt).not.toBeNull()
      // The slot was freed (one slot) and the first message acked, not given back; the lease was not released, so
      // the recoverer found it and the next claim counted the lost run: attempt 2.
      expect(attempts).toEqual([1, 2])
      expect(settlementsOf(settled, program.runId).map((settlement) => settlement.how)).toEqual(["ack", "ack"])
    }))

  it.effect("a handling that dies (a defect in the storage driver) returns the wake-up to the queue", () =>
    Effect.gen(function*() {
      let claims = 0
      const dying = (repository: Repository): Repository => ({
        ...repository,
        claim: (target, options) =>
          Effect.suspend(() => claims++ === 0 ? Effect.die(new Error("driver bug")) : repository.claim(target, options))
      })
      const settled: Array<Settlement> = []
      const { program, runs } = yield* runWith(["counted"], dying, {}, settled)
      expect(program.finishedAt).not.toBeNull()
      expect(runs).toEqual([0])
      // Given back and delivered again at once, not left unacknowledged for the sweeper (an hour away).
      expect(settlementsOf(settled, program.runId).map((settlement) => settlement.how)).toEqual(["nack", "ack"])
    }))

  it.effect("continuation: steps continued here are not also woken through the queue (one message, acked once)", () =>
    Effect.gen(function*() {
      const settled: Array<Settlement> = []
      const { finished, program, programsFinished, runs } = yield* runWith(
        ["counted", "counted", "counted"],
        (repository) => repository,
        { maxConsecutiveSteps: 20 },
        settled
      )
      expect(program.finishedAt).not.toBeNull()
      expect(runs).toEqual([0, 1, 2])
      expect(finished).toEqual([0, 1, 2])
      expect(programsFinished).toEqual([program.runId])
      expect(settlementsOf(settled, program.runId)).toEqual([{ runId: program.runId, step: 0, how: "ack" }])
    }))

  it.effect("continuation: one that committed but whose answer was lost runs the next step here (read back by the next token)", () =>
    Effect.gen(function*() {
      const settled: Array<Settlement> = []
      const { attempts, finished, program, runs } = yield* runWith(
        ["counted", "counted"],
        (repository) =>
          firstAdvanceAndClaim((lease, options) =>
            Effect.zipRight(repository.advanceAndClaim(lease, options), Effect.fail(dropped)))(repository),
        { maxConsecutiveSteps: 20 },
        settled
      )
      expect(program.finishedAt).not.toBeNull()
      expect(runs).toEqual([0, 1])
      expect(attempts).toEqual([1, 1])
      expect(finished).toEqual([0, 1])
      expect(settlementsOf(settled, program.runId)).toEqual([{ runId: program.runId, step: 0, how: "ack" }])
    }))

  it.effect("continuation: one that did not commit, the step taken by another worker meanwhile, is not continued into", () =>
    Effect.gen(function*() {
      const { finished, program, runs } = yield* runWith(
        ["counted", "counted"],
        (repository) =>
          firstAdvanceAndClaim((lease) =>
            repository.release(lease).pipe(
              Effect.zipRight(repository.claim(lease, { owner: "other-worker", leaseFor: Duration.seconds(1) })),
              Effect.zipRight(Effect.fail(dropped))
            ))(repository),
        { maxConsecutiveSteps: 20, recoveryInterval: Duration.seconds(1) }
      )
      expect(program.finishedAt).not.toBeNull()
      // Step 0 ran again once the other worker's lease expired; only that run finished it.
      expect(runs).toEqual([0, 0, 1])
      expect(finished).toEqual([0, 1])
    }))

  it.effect("continuation: one that committed, the program cancelled before the answer was read back, runs nothing more", () =>
    Effect.gen(function*() {
      const { finished, program, runs } = yield* runWith(
        ["counted", "counted"],
        (repository) =>
          firstAdvanceAndClaim((lease, options) =>
            repository.advanceAndClaim(lease, options).pipe(
              Effect.zipRight(Effect.orDie(repository.cancel(lease.runId, "stop it"))),
              Effect.zipRight(Effect.fail(dropped))
            ))(repository),
        // Retried at once: the program is no longer in progress, so the test kit stops waiting for the handler, and
        // a retry still sleeping on TestClock would hold the worker's shutdown.
        { maxConsecutiveSteps: 20, storageRetry: Schedule.recurs(1) }
      )
      expect(program.errorMessage).toBe("stop it")
      expect(runs).toEqual([0])
      expect(finished).toEqual([])
    }))

  it.effect("a refused outcome whose read-back fails past the storage retry is logged and its message acked; the lease's expiry recovers the step", () =>
    Effect.gen(function*() {
      let gets = 0
      const decorate = (repository: Repository): Repository => ({
        ...firstAdvance(() => Effect.succeed(false))(repository),
        get: (runId) =>
          Effect.suspend(() =>
            gets++ === 0 ? Effect.fail(new RepositoryError({ message: "connection refused" })) : repository.get(runId)
          )
      })
      const settled: Array<Settlement> = []
      const { attempts, finished, program, runs } = yield* runWith(
        ["counted", "counted"],
        decorate,
        { storageRetry: Schedule.recurs(0) },
        settled
      )
      expect(program.finishedAt).not.toBeNull()
      expect(runs).toEqual([0, 0, 1])
      expect(attempts).toEqual([1, 2, 1])
      expect(finished).toEqual([0, 1])
      expect(settlementsOf(settled, program.runId)[0]).toEqual({ runId: program.runId, step: 0, how: "ack" })
    }))
})
