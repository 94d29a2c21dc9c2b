import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { Job, JobContext, ProgramExecutor, ProgramExecutorTest, RetryableError } from "@program-executor/core"

describe("smoke", () => {
  it.effect("runs a program", () =>
    Effect.gen(function*() {
      let runs = 0
      const a = Job.make("a", Effect.gen(function*() {
        const ctx = yield* JobContext
        runs++
        yield* ctx.jobData.merge({ seen: true })
        if (ctx.attempt < 2) return yield* new RetryableError({ message: "later" })
      }))
      const b = Job.make("b", Effect.void)
      const runId = yield* ProgramExecutor.createProgram({ jobs: ["a", "b"] }).pipe(
        Effect.provide(ProgramExecutorTest.layer({ jobs: [a, b] }))
      )
      expect(runId).toBeDefined()
      const programs = yield* Effect.gen(function*() {
        yield* ProgramExecutor.createProgram({ jobs: ["a", "b"] })
        return yield* ProgramExecutorTest.runUntilIdle()
      }).pipe(Effect.provide(ProgramExecutorTest.layer({ jobs: [a, b] })))
      expect(programs[0]!.finishedAt).not.toBeNull()
      expect(programs[0]!.jobData).toEqual({ a: { seen: true } })
      expect(runs).toBeGreaterThanOrEqual(2)
    }))
})
