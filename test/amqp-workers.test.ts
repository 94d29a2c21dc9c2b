/**
 * The executor end to end on PostgreSQL + RabbitMQ with real worker processes (`test/support/worker.ts`): every
 * program finishes, each step runs once and in order, and a SIGTERM shuts a worker down gracefully.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { serviceUrl } from "../packages/core/test/utils/services.js"
import { eventually, type Execution, makeWorld, type World } from "./faults/support/world.js"

const jobs = ["step_a", "step_b", "step_c"]
/** Short jobs and a short sweep: the scenarios are about processes, not about recovery. */
const workerEnv = {
  PE_JOBS: jobs.join(","),
  PE_CONCURRENCY: "4",
  PE_JOB_DURATION: "20 millis",
  PE_SWEEP_INTERVAL: "2 seconds"
}

/** Waits until `count` workers consume from the world's queue: every one is up. */
const consumers = (world: World, count: number) =>
  eventually(`${count} consumer(s) on the queue`, async () => (await world.consumerCount()) === count, 60_000, world.logs)

/** Every program finished; every step ran exactly once and after the previous one had finished. */
const expectEachStepOnceInOrder = (executions: ReadonlyArray<Execution>, runIds: ReadonlyArray<string>) => {
  for (const runId of runIds) {
    const own = executions.filter((execution) => execution.run_id === runId)
    expect(own.map((execution) => execution.step), `steps run for ${runId}`).toEqual([0, 1, 2])
    for (const execution of own) expect(execution.finished_at).not.toBeNull()
    for (let step = 1; step < own.length; step++) {
      expect(own[step]!.started_at.getTime()).toBeGreaterThanOrEqual(own[step - 1]!.finished_at!.getTime())
    }
  }
}

const databaseUrl = serviceUrl("DATABASE_URL")
const amqpUrl = serviceUrl("AMQP_URL")
const describeWithServices = databaseUrl !== undefined && amqpUrl !== undefined ? describe : describe.skip

describeWithServices("workers on PostgreSQL + RabbitMQ", () => {
  let world: World | undefined
  afterEach(async () => {
    await world?.dispose()
    world = undefined
  })

  for (const count of [1, 3]) {
    it(`${count} worker process(es) run every program, each step once, in order`, async () => {
      world = await makeWorld({ databaseUrl: databaseUrl!, amqpUrl: amqpUrl!, prefix: "e2e" })
      const current = world
      for (let index = 0; index < count; index++) current.start(workerEnv)
      await consumers(current, count)
      const runIds = await current.create(count * 10, jobs)
      await eventually("every program finished", async () => (await current.inProgress()) === 0, 90_000, current.logs)
      const executions = await current.executions()
      expectEachStepOnceInOrder(executions, runIds)
      if (count > 1) {
        // Competing consumers: the work was spread, not done by one process.
        expect(new Set(executions.map((execution) => execution.pid)).size).toBeGreaterThan(1)
      }
      for (const worker of current.workers) worker.child.kill("SIGTERM")
      for (const worker of current.workers) expect((await worker.exited).code, current.logs()).toBe(0)
    }, 150_000)
  }

  it("SIGTERM: consumer cancelled first, running jobs finish within the grace, the rest go to other workers, exit 0", async () => {
    world = await makeWorld({ databaseUrl: databaseUrl!, amqpUrl: amqpUrl!, prefix: "e2e" })
    const current = world
    const graceMillis = 8_000
    const env = {
      ...workerEnv,
      PE_CONCURRENCY: "3",
      PE_JOB_DURATION: "2500 millis",
      PE_SHUTDOWN_GRACE: `${graceMillis} millis`
    }
    const target = current.start(env)
    current.start(env)
    current.start(env)
    await consumers(current, 3)
    const runIds = await current.create(12, jobs)
    const running = async () =>
      (await current.executions()).filter((execution) => execution.pid === target.child.pid && execution.finished_at === null)
    await eventually("the target worker is running jobs", async () => (await running()).length > 0, 60_000, current.logs)

    expect(await current.consumerCount()).toBe(3)
    const signalledAt = Date.now()
    target.child.kill("SIGTERM")
    // The consumer goes first, while the process is still finishing its jobs.
    await eventually("the target's consumer is cancelled", async () => (await current.consumerCount()) === 2, 5_000, current.logs)
    expect(target.child.exitCode, "still finishing its jobs when its consumer was cancelled").toBeNull()
    const exit = await target.exited
    expect(exit.code, current.logs()).toBe(0)
    expect(exit.at - signalledAt).toBeLessThan(graceMillis)

    await eventually("every program finished", async () => (await current.inProgress()) === 0, 90_000, current.logs)
    const executions = await current.executions()
    expectEachStepOnceInOrder(executions, runIds)
    const byTarget = executions.filter((execution) => execution.pid === target.child.pid)
    for (const execution of byTarget) {
      // Its running jobs finished; it started none after the signal (a second for one already taken).
      expect(execution.finished_at).not.toBeNull()
      expect(execution.started_at.getTime()).toBeLessThan(signalledAt + 1_000)
    }
    expect(executions.some((execution) => execution.pid !== target.child.pid && execution.started_at.getTime() > signalledAt))
      .toBe(true)
    for (const worker of current.workers.slice(1)) worker.child.kill("SIGTERM")
    for (const worker of current.workers.slice(1)) expect((await worker.exited).code, current.logs()).toBe(0)
  }, 150_000)
})
