/**
 * The executor's lost-run guard (`exhausted`) at its boundaries: a step lost exactly `maxLostRuns` times still runs,
 * and one lost as often as the job's `maxAttempts` does not. Each test was seen failing with the comparison it is
 * named after turned (`>` into `>=`, `>=` into `>`).
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
  ProgramRepository
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

/** Loses the first run of a one-job program `lost` times, then starts a worker and waits for the outcome. */
const afterLosses = (
  lost: number,
  job: Job.Job,
  log: Ref.Ref<ReadonlyArray<Execution>>,
  config: Partial<ExecutorConfig.ExecutorOptions>
) =>
  Effect.gen(function*() {
    const runId = yield* ProgramExecutor.createProgram({ jobs: [job.name] })
    for (let i = 0; i < lost; i++) yield* dieHolding(runId)
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
      Layer.mergeAll(ProgramRepository.layerMemory, ProgramQueue.layerMemory, ProgramEvents.layer(), JobLibrary.layer(job))
    )
  )

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
})
