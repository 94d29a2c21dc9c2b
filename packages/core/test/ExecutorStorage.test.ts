/**
 * The executor against a storage that fails at the worst moments, through the test kit on `TestClock`: an answer
 * lost after a write committed (the read-back in `settle`), a write refused for its data, a claim that keeps failing
 * (returned to the queue, not poison) or is refused (poison), a heartbeat that fails once. Each test was seen failing
 * with the guard it is named after mutated (Stryker, see docs/mutation-scores.md).
 */
import { describe, expect, it } from "@effect/vitest"
import {
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
import { Context, Duration, Effect, Layer, Metric, Ref, Schedule, Stream } from "effect"

type Repository = ProgramRepository["Type"]

/** The memory storage with its repository decorated. */
const storageWith = (decorate: (repository: Repository) => Repository) =>
  Layer.map(
    Layer.merge(ProgramRepository.layerMemory, ProgramQueue.layerMemory),
    (context) => Context.add(context, ProgramRepository, decorate(Context.get(context, ProgramRepository)))
  )

/** Runs a program of `jobs` to its end; returns its row, the steps of its StepFinished events and its runs per step. */
const runWith = (jobs: ReadonlyArray<string>, decorate: (repository: Repository) => Repository, config = {}) =>
  Effect.gen(function*() {
    const runs = yield* Ref.make<ReadonlyArray<number>>([])
    const finished = yield* Ref.make<ReadonlyArray<number>>([])
    const job = (name: string) => Job.make(name, Effect.void)
    const counted = Job.make(
      "counted",
      Effect.flatMap(JobContext, (ctx) => Ref.update(runs, (all) => [...all, ctx.step]))
    )
    const program = yield* Effect.gen(function*() {
      const events = yield* ProgramEvents.subscribe
      yield* events.pipe(
        Stream.runForEach((event) =>
          event._tag === "StepFinished" ? Ref.update(finished, (all) => [...all, event.step]) : Effect.void
        ),
        Effect.forkScoped
      )
      const runId = yield* ProgramExecutor.createProgram({ jobs })
      const programs = yield* ProgramExecutorTest.runUntilIdle()
      return programs.find((program) => program.runId === runId)!
    }).pipe(
      Effect.provide(ProgramExecutorTest.layer({
        jobs: [counted, job("quick")],
        storage: storageWith(decorate),
        // No sweep or recovery within a test: a step that runs again was woken by the executor itself. One step per
        // message: these tests are about `advance` and its read-back (continuation's write is `advanceAndClaim`).
        config: { staleAfter: Duration.hours(1), sweepInterval: Duration.hours(1), maxConsecutiveSteps: 1, ...config }
      })),
      Effect.scoped
    )
    return { program, finished: yield* Ref.get(finished), runs: yield* Ref.get(runs) }
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

const dropped = new RepositoryError({ message: "connection reset after the statement was sent" })

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
          repository.release(lease).pipe(
            Effect.zipRight(repository.claim(lease, { owner: "other-worker", leaseFor: Duration.seconds(1) })),
            Effect.zipRight(Effect.fail(dropped))
          )),
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
})
