/**
 * RabbitMQ stops (`rabbitmqctl stop_app`) and starts again while worker processes run many programs on PostgreSQL +
 * RabbitMQ: every program finishes and no step runs twice. Messages the broker held survive (durable queue,
 * persistent messages); wake-ups published during the outage are retried after the reconnect, and whatever was lost
 * is re-published by the sweeper. It stops the shared broker, so it runs only in the sequential faults run
 * (`PE_FAULTS=1`), never beside the normal suite. The broker is always started again.
 *
 *   PE_FAULTS=1 DATABASE_URL=postgres://postgres@127.0.0.1:5432/test AMQP_URL=amqp://guest:guest@127.0.0.1:5672 \
 *     npx vitest run test/faults
 */
import { afterAll, afterEach, describe, expect, it } from "@effect/vitest"
import { execFileSync } from "node:child_process"
import { serviceUrl } from "../../packages/core/test/utils/services.js"
import { printTable } from "./support/check.js"
import { eventually, makeWorld, sleep, type World } from "./support/world.js"

const enabled = process.env.PE_FAULTS === "1"
const jobs = ["step_a", "step_b", "step_c"]
const programs = 60

const rabbitmqctl = (...args: Array<string>) => execFileSync("rabbitmqctl", ["-q", ...args], { stdio: "ignore" })
const startBroker = () => {
  rabbitmqctl("start_app")
  rabbitmqctl("await_startup")
}

const databaseUrl = enabled ? serviceUrl("DATABASE_URL") : undefined
const amqpUrl = enabled ? serviceUrl("AMQP_URL") : undefined
const describeFault = enabled && databaseUrl !== undefined && amqpUrl !== undefined ? describe : describe.skip
if (!enabled) console.warn("\n!!! test/faults skipped: set PE_FAULTS=1 (it stops RabbitMQ) to run them\n")

describeFault("RabbitMQ restart under running workers", () => {
  let world: World | undefined
  afterEach(async () => {
    await world?.dispose()
    world = undefined
  })
  afterAll(() => {
    // Whatever happened, leave the shared broker running.
    startBroker()
  })

  it(`${programs} programs: every one finishes and no step runs twice across stop_app / start_app`, async () => {
    world = await makeWorld({ databaseUrl: databaseUrl!, amqpUrl: amqpUrl!, prefix: "fault_rmq" })
    const current = world
    const runIds = await current.create(programs, jobs)
    const began = Date.now()
    // Jobs long enough that the outage catches steps running, finishing and waiting to be published.
    const env = {
      PE_JOBS: jobs.join(","),
      PE_CONCURRENCY: "4",
      PE_JOB_DURATION: "400 millis",
      PE_SWEEP_INTERVAL: "1 second",
      PE_STALE_AFTER: "3 seconds"
    }
    const workers = [current.start(env), current.start(env)]
    await eventually("some steps ran", async () => (await current.stepsDone()) >= 16, 90_000, current.logs)

    let doneWhenStopped = 0
    try {
      rabbitmqctl("stop_app")
      doneWhenStopped = await current.stepsDone()
      // The outage itself (a fault's duration, not a wait for an outcome): jobs finish and advance in PostgreSQL,
      // and cannot publish or ack meanwhile.
      await sleep(4_000)
    } finally {
      startBroker()
    }
    expect(doneWhenStopped, "the broker stopped mid-run").toBeLessThan(programs * jobs.length)

    await eventually("every program finished and no lease is held", async () => (await current.unsettled()) === 0, 120_000, current.logs)
    const report = await current.check(runIds)
    printTable([{ scenario: "RabbitMQ stop_app / start_app", report, wallMillis: Date.now() - began }])
    expect(report.violations).toEqual([])
    expect(report.finished).toBe(programs)
    expect(report.duplicates).toBe(0)

    for (const exit of await current.stop(workers)) expect(exit.code, current.logs()).toBe(0)
  }, 300_000)
})
