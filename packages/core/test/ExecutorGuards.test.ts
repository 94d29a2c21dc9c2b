/**
 * The executor's lost-run guard (`exhausted`) at its boundaries: a step lost exactly `maxLostRuns` times still runs,
 * and one lost as often as the job's `maxAttempts` does not. Each test was seen failing with the comparison it is
 * named after turned (`>` into `>=`, `>=` into `>`). The retry count includes lost runs, and a step never lost is
 * left to the retry decision (each seen failing with its Stryker mutant, see docs/mutation-scores.md).
 */
import { describe, expect, it } from "@effect/vitest"
import {
  Executor,
  ExecutorConfig,
  Job,
  JobLibrary,
  ProgramEvents,
  ProgramExecutor,
  ProgramQueue,
  ProgramRepository,
  RetryableError
} from "@program-executor/core"
import { Duration, Effect, Layer, Option, Ref } from "effect"
import { awaitProgram, type Execution, fastConfig, pollUntil, recorded } from "./conformance/ExecutorConformance.js"

/** Claims the step and dies holding it: nothing recorded, the lease expires, the next claim counts a lost run. */
const dieHolding = (runId: string) =>
  Effect.flatMap(ProgramRepository, (repository) =>
    pollUntil(
      repository.claim({ runId, step: 0 }, { owner: "dying-worker", leaseFor: Duration.millis(150) }),
      Option.isSome
    )).pipe(Effect.timeout("10 seconds"))

/**
 * Creates a one-job program running `job`, prepares its first step with `before` (a dying worker, recorded retries),
 * then starts a worker whose library holds `library` and waits for the outcome.
 */
const afterSetup = (
  job: string,
  before: (runId: string) => Effect.Effect<unknown, unknown, ProgramRepository>,
  library: ReadonlyArray<Job.Job>,
  log: Ref.Ref<ReadonlyArray<Execution>>,
  config: Partial<ExecutorConfig.ExecutorOptions>
) =>
  Effect.gen(function*() {
    const runId = yield* ProgramExecutor.createProgram({ jobs: [job] })
    yield* before(runId)
    yield* Effect.forkScoped(
      Executor.run.pipe(
        Effect.provideService(ExecutorConfig.ExecutorConfig, {
          ...ExecutorConfig.defaults(),
          ...fastConfig,
          ...config,
          workerId: "worker-0"
        })
      )
    )
    const program = yield* awaitProgram(runId)
    const attempts = (yield* Ref.get(log)).filter((execution) => execution.runId === runId).map((e) => e.attempt)
    return { program, attempts }
  }).pipe(
    // The worker stops with this scope, before the storage closes under it.
    Effect.scoped,
    Effect.provideServiceEffect(ProgramExecutor, ProgramExecutor.make),
    Effect.provide(
      Layer.mergeAll(
        ProgramRepository.layerMemory,
        ProgramQueue.layerMemory,
        ProgramEvents.layer(),
        JobLibrary.layer(...library)
      )
    )
  )

/** Loses the first run of a one-job program `lost` times, then starts a worker and waits for the outcome. */
const afterLosses = (
  lost: number,
  job: Job.Job,
  log: Ref.Ref<ReadonlyArray<Execution>>,
  config: Partial<ExecutorConfig.ExecutorOptions>
) =>
  afterSetup(job.name, (runId) => Effect.forEach(Array.from({ length: lost }), () => dieHolding(runId)), [job], log, config)

describe("executor lost-run guard (exhausted) at its boundaries", () => {
  it.scopedLive("a step lost exactly maxLostRuns times still runs, as its attempt maxLostRuns + 1", () =>
    Effect.gen(function*() {
      const log = yield* Ref.make<ReadonlyArray<Execution>>([])
      const { attempts, program } = yield* afterLosses(2, recorded(log, "a"), log, { maxLostRuns: 2 })
      expect(program.finishedAt).not.toBeNull()
      expect(attempts).toEqual([3])
    }))

  it.scopedLive("a step lost as often as the job's maxAttempts fails without running; one loss fewer still runs", () =>
    Effect.gen(function*() {
      const log = yield* Ref.make<ReadonlyArray<Execution>>([])
      const job = (name: string) => Job.make(name, recorded(log, name).run, { maxAttempts: 3 })
      const exhausted = yield* afterLosses(3, job("b"), log, { maxLostRuns: 10, maxAttempts: 20 })
      expect(exhausted.program.erroredAt).not.toBeNull()
      expect(exhausted.program.errorMessage).toMatch(
        /worker lost 3 time\(s\) running job "b" \(3 run\(s\) without completing, maxAttempts 3\)/
      )
      expect(exhausted.attempts).toEqual([])
      const runs = yield* afterLosses(2, job("c"), log, { maxLostRuns: 10, maxAttempts: 20 })
      expect(runs.program.finishedAt).not.toBeNull()
      expect(runs.attempts).toEqual([3])
    }))

  it.scopedLive("retry counting: a lost run counts toward maxAttempts (lost once, maxAttempts 3: two more runs)", () =>
    Effect.gen(function*() {
      const log = yield* Ref.make<ReadonlyArray<Execution>>([])
      const failing = recorded(log, "d", () => Effect.fail(new RetryableError({ message: "still down" })))
      const { attempts, program } = yield* afterLosses(1, Job.make("d", failing.run, { maxAttempts: 3 }), log, {
        maxAttempts: 20
      })
      expect(program.errorMessage).toBe("gave up after 3 attempt(s): still down")
      expect(attempts).toEqual([2, 3])
    }))

  it.scopedLive("a step never lost is not refused by the lost-run guard, even past a lowered maxAttempts", () =>
    Effect.gen(function*() {
      const log = yield* Ref.make<ReadonlyArray<Execution>>([])
      // Three retries recorded by a worker allowing more attempts; this worker allows two. The retry decision bounds
      // the retries; the lost-run guard is about lost runs only, so the step runs (and here succeeds).
      const recordRetries = (runId: string) =>
        Effect.flatMap(ProgramRepository, (repository) =>
          Effect.forEach([1, 2, 3], () =>
            Effect.flatMap(
              pollUntil(repository.claim({ runId, step: 0 }, { owner: "earlier-worker", leaseFor: Duration.seconds(5) }), Option.isSome),
              (claimed) =>
                repository.scheduleRetry(
                  { runId, step: 0, token: Option.getOrThrow(claimed).leaseToken ?? "" },
                  { errorMessage: "earlier failure", delay: Duration.zero, countAttempt: true }
                )
            ), { discard: true })).pipe(Effect.timeout("10 seconds"))
      const { attempts, program } = yield* afterSetup("e", recordRetries, [recorded(log, "e")], log, { maxAttempts: 2 })
      expect(program.finishedAt).not.toBeNull()
      expect(attempts).toEqual([4])
    }))

  it.scopedLive("an unknown job whose step was lost fails naming the job (the lost-run guard needs no job)", () =>
    Effect.gen(function*() {
      const log = yield* Ref.make<ReadonlyArray<Execution>>([])
      const { program } = yield* afterSetup("missing", dieHolding, [recorded(log, "other")], log, {})
      expect(program.errorMessage).toMatch(/^unknown job "missing"/)
    }))
})
