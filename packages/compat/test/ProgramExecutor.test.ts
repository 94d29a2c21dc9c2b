import { describe, expect, it } from "@effect/vitest"
import { IgnorableError, ProgramExecutor, type ProgramErrorEvent, RetryableError } from "@program-executor/compat"
import { randomUUID } from "node:crypto"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { serviceUrl } from "../../core/test/utils/services.js"
import { jobLibrary } from "./seedJobs.js"

const waitForEnd = async (executor: ProgramExecutor, runId: string) => {
  const deadline = Date.now() + 30_000
  while (Date.now() < deadline) {
    const program = await executor.getProgram(runId)
    if (program !== undefined && (program.finishedAt !== null || program.erroredAt !== null)) return program
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
  throw new Error(`program ${runId} did not end within 30 s`)
}

const suite = (config: () => Parameters<typeof ProgramExecutor.create>[0]) => {
  it("runs a seed-style job library unchanged, as the old library did", { timeout: 60_000 }, async () => {
    const executor = ProgramExecutor.create({ ...config(), retryDelayMs: 20 })
    const errors: Array<ProgramErrorEvent> = []
    executor.on("programError", (event: ProgramErrorEvent) => errors.push(event))
    try {
      await executor.processPrograms(jobLibrary)
      const ok = await executor.createProgram({
        jobs: ["first_job", "flaky_job", "not_in_the_library", "first_job"],
        programData: { customer: 7 },
        jobData: { first_job: { seen: 10 } }
      })
      const broken = await executor.createProgram({ jobs: ["first_job", "broken_job", "first_job"] })
      const ignored = await executor.createProgram({ jobs: ["ignored_job", "first_job"] })

      const done = await waitForEnd(executor, ok)
      expect(done.finishedAt).not.toBeNull()
      expect(done.jobData).toEqual({ first_job: { seen: 12, firstOfRest: "first_job" }, flaky_job: { failures: 2 } })

      const failed = await waitForEnd(executor, broken)
      expect(failed.erroredAt).not.toBeNull()
      expect(failed.step).toBe(1)
      expect(failed.errorMessage).toBe("this job is broken")

      const quiet = await waitForEnd(executor, ignored)
      expect(quiet.erroredAt).not.toBeNull()
      expect(quiet.errorMessage).toBe("nothing to do for this customer")

      // programError: each retry and the fatal error, with the old message shape; nothing for the ignorable one.
      const retries = errors.filter((event) => event.message.runId === ok)
      expect(retries).toHaveLength(2)
      expect(retries[0]!.message).toEqual({
        jobs: ["flaky_job", "not_in_the_library", "first_job"],
        programData: { customer: 7 },
        runId: ok
      })
      expect(retries[0]!.error.message).toBe("remote service unavailable")
      expect(retries[0]!.error.retryable).toBe(true)
      const fatal = errors.filter((event) => event.message.runId === broken)
      expect(fatal).toHaveLength(1)
      expect(fatal[0]!.error.message).toBe("this job is broken")
      expect(fatal[0]!.message.jobs).toEqual(["broken_job", "first_job"])
      expect(errors.filter((event) => event.message.runId === ignored)).toHaveLength(0)
    } finally {
      await executor.close()
    }
  })

  it("processPrograms rejects when the worker cannot start (concurrency: 0), with the reason", async () => {
    const executor = ProgramExecutor.create({ ...config(), concurrency: 0 })
    try {
      await expect(executor.processPrograms(jobLibrary)).rejects.toThrow(/concurrency must be an integer >= 1 \(got 0\)/)
    } finally {
      await executor.close()
    }
  })

  it("a step failing as soon as the worker starts is reported: the listener subscribes first", { timeout: 60_000 }, async () => {
    const executor = ProgramExecutor.create({ ...config(), retryDelayMs: 20 })
    try {
      // Created before the worker, so its first step is due the moment the worker subscribes to the queue.
      const broken = await executor.createProgram({ jobs: ["broken_job"] })
      const reported = new Promise<ProgramErrorEvent>((resolve) =>
        executor.on("programError", (event: ProgramErrorEvent) => {
          if (event.message.runId === broken) resolve(event)
        })
      )
      await executor.processPrograms(jobLibrary)
      expect((await reported).error.message).toBe("this job is broken")
    } finally {
      await executor.close()
    }
  })

  it("rejects an invalid program with the reason, storing nothing", async () => {
    const executor = ProgramExecutor.create(config())
    try {
      // Each rejected call carries an idempotency key; the same key is then used by a valid program. Had anything of
      // the rejected call been stored, that key would be taken and the earlier program (its data) returned.
      const single = `compat-single-${randomUUID()}`
      await expect(executor.createProgram({ jobs: [], idempotencyKey: single, programData: { from: "rejected" } }))
        .rejects.toThrow(/at least one job/)
      const batch = `compat-batch-${randomUUID()}`
      await expect(executor.createPrograms([
        { jobs: ["first_job"], idempotencyKey: batch, programData: { from: "rejected" } },
        { jobs: [] }
      ])).rejects.toThrow(/at least one job/)
      for (const key of [single, batch]) {
        const runId = await executor.createProgram({ jobs: ["first_job"], idempotencyKey: key, programData: { from: "after" } })
        expect((await executor.getProgram(runId))?.programData).toEqual({ from: "after" })
      }
    } finally {
      await executor.close()
    }
  })
}

describe("compat errors", () => {
  it("are built like the old library's", () => {
    const retryable = new RetryableError("later", 503)
    expect(retryable).toBeInstanceOf(Error)
    expect(retryable).toMatchObject({ message: "later", code: 503, retryable: true })
    const ignorable = new IgnorableError("skip", 404)
    expect(ignorable).toMatchObject({ message: "skip", code: 404, ignorable: true, response: { status: 404 } })
    expect(RetryableError.decorate(new Error("x")).retryable).toBe(true)
  })
})

describe("compat facade on SQLite", () => {
  const dir = mkdtempSync(join(tmpdir(), "pe-compat-"))
  suite(() => ({ databaseUrl: `sqlite:${join(dir, "programs.db")}`, tableName: "programs" }))
})

const databaseUrl = serviceUrl("DATABASE_URL")
const amqpUrl = serviceUrl("AMQP_URL")
if (databaseUrl === undefined || amqpUrl === undefined) {
  describe.skip("compat facade on PostgreSQL + RabbitMQ (DATABASE_URL / AMQP_URL not set)", () => {})
} else {
  describe("compat facade on PostgreSQL + RabbitMQ", () => {
    suite(() => ({ databaseUrl, amqpUrl, tableName: "compat_test_programs", queueName: "compat-test-programs" }))
  })
}
