/**
 * Testing your own jobs: everything in memory, time driven by `TestClock`, so retries with backoff, timeouts and
 * checkpoint budgets are tested in milliseconds. Run: pnpm vitest run examples/testing-jobs.test.ts
 */
import { describe, expect, it } from "@effect/vitest"
import {
  FatalError,
  Job,
  JobContext,
  ProgramExecutor,
  ProgramExecutorTest,
  RetryableError
} from "@program-executor/core"
import { Effect, Ref, Schedule, TestClock } from "effect"

/** The job under test: fails while the remote side is down, keeps its progress in job data. */
const makeSync = (failures: Ref.Ref<number>) =>
  Job.make(
    "sync_contacts",
    Effect.gen(function*() {
      const ctx = yield* JobContext
      const { synced = 0 } = yield* ctx.jobData.get
      yield* ctx.jobData.merge({ synced: synced + 10 })
      if ((yield* Ref.getAndUpdate(failures, (n) => n - 1)) > 0) {
        return yield* new RetryableError({ message: "CRM is down" })
      }
    }),
    { retrySchedule: Schedule.exponential("1 minute"), maxAttempts: 5 }
  )

/** The job after it: counts its runs, so a test can tell whether the program got that far. */
const makeReport = (runs: Ref.Ref<number>) => Job.make("report", Ref.update(runs, (n) => n + 1))

describe("testing jobs with ProgramExecutorTest and TestClock", () => {
  it.effect("retries with backoff, then finishes, keeping job data between attempts", () =>
    Effect.gen(function*() {
      const sync = makeSync(yield* Ref.make(2))
      const reports = yield* Ref.make(0)
      const program = yield* ProgramExecutorTest.runProgram(
        { jobs: ["sync_contacts", "report"], jobData: { sync_contacts: { synced: 0 } } },
        { jobs: [sync, makeReport(reports)] }
      )
      expect(program.finishedAt).not.toBeNull()
      expect(yield* Ref.get(reports)).toBe(1)
      expect(program.jobData).toEqual({ sync_contacts: { synced: 30 } })
      // Two retries, 1 minute then 2 minutes apart: simulated, not waited for.
      expect(yield* TestClock.currentTimeMillis).toBeGreaterThanOrEqual(3 * 60_000)
    }))

  it.effect("gives up after the job's maxAttempts (5): exactly 5 runs, then the program errors at that step", () =>
    Effect.gen(function*() {
      const failures = yield* Ref.make(100)
      const reports = yield* Ref.make(0)
      const program = yield* ProgramExecutorTest.runProgram(
        { jobs: ["sync_contacts", "report"] },
        { jobs: [makeSync(failures), makeReport(reports)] }
      )
      expect(yield* Ref.get(reports)).toBe(0)
      expect(program.erroredAt).not.toBeNull()
      expect(program.step).toBe(0)
      // The job's own maxAttempts (5), not the executor's default (20); each run stored its progress.
      expect(100 - (yield* Ref.get(failures))).toBe(5)
      expect(program.jobData).toEqual({ sync_contacts: { synced: 50 } })
      expect(program.errorMessage).toBe("gave up after 5 attempt(s): CRM is down")
    }))

  const validate = Job.make("validate", Effect.fail(new FatalError({ message: "bad input" })))

  it.effect("a fatal error stops the program at once: the remaining jobs never run", () => {
    const reports = Ref.unsafeMake(0)
    return Effect.gen(function*() {
      yield* ProgramExecutor.createProgram({ jobs: ["validate", "report"] })
      const [program] = yield* ProgramExecutorTest.runUntilIdle()
      expect(program!.errorMessage).toBe("bad input")
      expect(program!.step).toBe(0)
      expect(program!.finishedAt).toBeNull()
      expect(yield* Ref.get(reports)).toBe(0)
    }).pipe(Effect.provide(ProgramExecutorTest.layer({ jobs: [validate, makeReport(reports)] })))
  })
})
