import { describe, expect, it } from "@effect/vitest"
import {
  ExecutionTimeExceededError,
  Job,
  JobContext,
  JobLibrary,
  Program,
  ProgramExecutor,
  ProgramExecutorTest,
  RetryableError
} from "@program-executor/core"
import { Effect, Layer, Ref, Schema } from "effect"
import { awaitProgram, fastConfig } from "./conformance/ExecutorConformance.js"

const runProgram = (jobs: ReadonlyArray<Job.Job>, input: Program.CreateProgramInput) =>
  ProgramExecutorTest.runProgram(input, { jobs })

describe("Job", () => {
  it.effect("typed jobs decode programData and encode jobData with their schemas", () =>
    Effect.gen(function*() {
      const seen = yield* Ref.make<unknown>(undefined)
      const report = Job.make(
        "report",
        {
          programData: Schema.Struct({ shop: Schema.Number, since: Schema.DateFromString }),
          jobData: Schema.Struct({ sent: Schema.optionalWith(Schema.Number, { default: () => 0 }) })
        },
        (ctx) =>
          Effect.gen(function*() {
            const { sent } = yield* ctx.jobData.get
            yield* Ref.set(seen, { shop: ctx.programData.shop, year: ctx.programData.since.getUTCFullYear(), sent })
            yield* ctx.jobData.merge({ sent: sent + 1 })
          })
      )
      const program = yield* runProgram([report], {
        jobs: ["report"],
        programData: { shop: 7, since: "2024-05-01T00:00:00Z" }
      })
      expect(program.finishedAt).not.toBeNull()
      expect(yield* Ref.get(seen)).toEqual({ shop: 7, year: 2024, sent: 0 })
      expect(program.jobData).toEqual({ report: { sent: 1 } })
    }))

  it.effect("programData that does not match the job's schema is fatal, naming the job", () =>
    Effect.gen(function*() {
      const typed = Job.make("typed", { programData: Schema.Struct({ shop: Schema.Number }) }, () => Effect.void)
      const program = yield* runProgram([typed], { jobs: ["typed"], programData: { shop: "seven" } })
      expect(program.erroredAt).not.toBeNull()
      expect(program.errorMessage).toMatch(/^programData of job "typed" does not match its schema/)
      expect(program.errorMessage).toMatch(/shop/)
    }))

  it.live("fromPromise: plain async code, with job data, checkpoint and seed-style errors", () =>
    Effect.gen(function*() {
      const job = Job.fromPromise("async", async (ctx) => {
        const { count = 0 } = await ctx.jobData.get()
        await ctx.jobData.merge({ count: count + 1 })
        if (count === 0) throw Object.assign(new Error("flaky"), { retryable: true })
        await new Promise((resolve) => setTimeout(resolve, 5))
        // The budget is spent: the failure reaches job code as itself, not wrapped.
        const error = await ctx.checkpoint({ checked: true }, { maxExecutionTime: 1 }).catch((e) => e)
        if (!(error instanceof ExecutionTimeExceededError)) throw new Error("expected ExecutionTimeExceededError")
      })
      const program = yield* Effect.gen(function*() {
        const runId = yield* ProgramExecutor.createProgram({ jobs: ["async"] })
        return yield* awaitProgram(runId)
      }).pipe(Effect.provide(ProgramExecutorTest.layer({ jobs: [job], config: fastConfig })))
      expect(program.errorMessage).toBe("flaky")
      expect(program.finishedAt).not.toBeNull()
      expect(program.jobData).toEqual({ async: { count: 2, checked: true } })
    }))

  it.effect("fromClass runs an old-library job class unchanged", () =>
    Effect.gen(function*() {
      const calls: Array<unknown> = []
      class SampleJob {
        static get name() {
          return "sample_job_name"
        }
        static create(programData: Record<string, unknown>) {
          return new SampleJob(programData)
        }
        constructor(readonly programData: Record<string, unknown>) {}
        async execute(
          message: { jobs: ReadonlyArray<string>; programData: unknown; runId: string },
          jobDataHandler: Job.SeedJobDataHandler
        ) {
          const data = await jobDataHandler.get()
          calls.push({ jobs: message.jobs, programData: this.programData, data })
          await jobDataHandler.set({ stored: "progress" })
          await jobDataHandler.merge({ more: 1 })
          if (calls.length === 1) {
            const error = new Error("temporarily unavailable") as Error & { retryable: boolean }
            error.retryable = true
            throw error
          }
        }
      }
      const program = yield* runProgram([Job.fromClass(SampleJob), Job.make("after", Effect.void)], {
        jobs: ["sample_job_name", "after"],
        programData: { global: "data" },
        jobData: { sample_job_name: { property: "value" } }
      })
      expect(program.finishedAt).not.toBeNull()
      expect(calls).toEqual([
        { jobs: ["sample_job_name", "after"], programData: { global: "data" }, data: { property: "value" } },
        { jobs: ["sample_job_name", "after"], programData: { global: "data" }, data: { stored: "progress", more: 1 } }
      ])
      expect(program.jobData).toEqual({ sample_job_name: { stored: "progress", more: 1 } })
    }))

  it.effect("concurrent merges of one job never lose an update", () =>
    Effect.gen(function*() {
      const job = Job.make(
        "parallel",
        Effect.gen(function*() {
          const ctx = yield* JobContext
          yield* Effect.forEach(Array.from({ length: 20 }, (_, i) => i), (i) => ctx.jobData.merge({ [`k${i}`]: i }), {
            concurrency: "unbounded"
          })
        })
      )
      const program = yield* runProgram([job], { jobs: ["parallel"] })
      expect(Object.keys(program.jobData.parallel as object).length).toBe(20)
    }))

  it.effect("a library refuses a duplicate job name, naming it", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(
        Layer.build(JobLibrary.layer(Job.make("same", Effect.void), Job.make("same", Effect.void))).pipe(Effect.scoped)
      )
      expect(error.message).toBe(`job "same" is defined more than once`)
    }))

  it.effect("a job's services are captured when the library is built", () =>
    Effect.gen(function*() {
      class Greeter extends Effect.Tag("Greeter")<Greeter, { readonly greet: (name: string) => string }>() {}
      const greeting = yield* Ref.make("")
      const job = Job.make("greet", Effect.flatMap(Greeter.greet("jobs"), (text) => Ref.set(greeting, text)))
      yield* Effect.gen(function*() {
        yield* ProgramExecutor.createProgram({ jobs: ["greet"] })
        yield* ProgramExecutorTest.runUntilIdle()
      }).pipe(
        Effect.provide(ProgramExecutorTest.layer({ jobs: [job] })),
        Effect.provide(Layer.succeed(Greeter, { greet: (name) => `hello ${name}` }))
      )
      expect(yield* Ref.get(greeting)).toBe("hello jobs")
    }))

  it("RetryableError and IgnorableError carry the old library's flags", () => {
    expect(new RetryableError({ message: "x" }).retryable).toBe(true)
  })
})

describe("jobs using the executor", () => {
  it.effect("a job can start another program (ProgramExecutor is available to jobs in the test kit)", () =>
    Effect.gen(function*() {
      const parent = Job.make(
        "spawn",
        Effect.flatMap(JobContext, (ctx) =>
          ProgramExecutor.createProgram({ jobs: ["child"], programData: { parent: ctx.runId } }).pipe(Effect.orDie))
      )
      const programs = yield* Effect.gen(function*() {
        yield* ProgramExecutor.createProgram({ jobs: ["spawn"] })
        return yield* ProgramExecutorTest.runUntilIdle()
      }).pipe(Effect.provide(ProgramExecutorTest.layer({ jobs: [parent, Job.make("child", Effect.void)] })))
      expect(programs.length).toBe(2)
      expect(programs[1]!.programData).toEqual({ parent: programs[0]!.runId })
      expect(programs.every((program) => program.finishedAt !== null)).toBe(true)
    }))
})
