/**
 * Duplicate delivery: every wake-up is published twice (the client's first ones and the workers' next-step ones,
 * through a queue hook), and a foreign publisher sends every step of every program again, during the run and after
 * it. The claim drops every copy: no job runs twice, nothing runs after its program finished.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { serviceUrl } from "../../packages/core/test/utils/services.js"
import { printTable } from "./support/check.js"
import { jobNames } from "./support/hooks.js"
import { eventually, makeWorld, type World } from "./support/world.js"

const databaseUrl = serviceUrl("DATABASE_URL")
const amqpUrl = serviceUrl("AMQP_URL")
const describeWithServices = databaseUrl !== undefined && amqpUrl !== undefined ? describe : describe.skip
const programs = Number(process.env.PE_FAULT_PROGRAMS ?? 200) / 2

const everyStepOf = (runIds: ReadonlyArray<string>) =>
  runIds.flatMap((runId) => jobNames.map((_, step) => Buffer.from(JSON.stringify({ runId, step }))))

describeWithServices("duplicate delivery", () => {
  let world: World | undefined
  afterEach(async () => {
    await world?.dispose()
    world = undefined
  })

  it(`${programs} programs, every wake-up published twice, every step re-sent by a second publisher: no job runs twice`, async () => {
    world = await makeWorld({ databaseUrl: databaseUrl!, amqpUrl: amqpUrl!, prefix: "dup", duplicatePublish: true })
    const current = world
    const runIds = await current.create(programs)
    const began = Date.now()
    const env = { PE_DUPLICATE_PUBLISH: "true" }
    const workers = [current.start(env), current.start(env), current.start(env)]
    const total = programs * jobNames.length

    await eventually("a third of the steps are done", async () => (await current.stepsDone()) >= total / 3, 120_000, current.logs)
    // Early (future steps), current and stale (past steps) wake-ups, all at once.
    await current.publishRaw(everyStepOf(runIds))
    await eventually("every program finished and no lease is held", async () => (await current.unsettled()) === 0, 180_000, current.logs)
    const wallMillis = Date.now() - began
    const report = await current.check(runIds)

    // After the run: every step of every finished program again. Nothing may run.
    await current.publishRaw(everyStepOf(runIds))
    await eventually("the queue is drained", async () => (await current.queueDepth()) === 0, 60_000, current.logs)
    // The last deliveries may still be in a worker's hands: stopping the workers settles every one of them (handled
    // and acked, or given back to the queue) before anything is counted.
    for (const exit of await current.stop(workers)) expect(exit.code, current.logs()).toBe(0)
    expect(await current.queueDepth()).toBe(0)
    const after = await current.check(runIds)

    printTable([
      { scenario: "duplicate publish ×2 + re-sent steps", report, wallMillis },
      { scenario: "re-sent after finishing", report: after, wallMillis: Date.now() - began }
    ])
    expect(report.violations).toEqual([])
    expect(report.finished).toBe(programs)
    expect(report.duplicates).toBe(0)
    expect(report.executions).toBe(total)
    expect(after.violations).toEqual([])
    expect(after.executions).toBe(total)
  })
})
