/**
 * Graceful shutdown: SIGTERM to every worker in the middle of a run, then they start again. Each worker stops
 * consuming, lets its running jobs finish and exits 0 within the configured grace; no job is interrupted, none that
 * completed runs again, and the programs left over finish after the restart.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { serviceUrl } from "../../packages/core/test/utils/services.js"
import { type Death, printTable } from "./support/check.js"
import { jobNames } from "./support/hooks.js"
import { eventually, makeWorld, type World } from "./support/world.js"

const databaseUrl = serviceUrl("DATABASE_URL")
const amqpUrl = serviceUrl("AMQP_URL")
const describeWithServices = databaseUrl !== undefined && amqpUrl !== undefined ? describe : describe.skip
const programs = Number(process.env.PE_FAULT_PROGRAMS ?? 200) / 4

describeWithServices("graceful shutdown", () => {
  let world: World | undefined
  afterEach(async () => {
    await world?.dispose()
    world = undefined
  })

  it(`${programs} programs, SIGTERM to all 3 workers mid-run, then restarted: nothing lost, nothing interrupted`, async () => {
    world = await makeWorld({ databaseUrl: databaseUrl!, amqpUrl: amqpUrl!, prefix: "term" })
    const current = world
    const graceMillis = 8_000
    const env = { PE_CONCURRENCY: "4", PE_JOB_DURATION: "400 millis", PE_SHUTDOWN_GRACE: `${graceMillis} millis` }
    const runIds = await current.create(programs)
    const began = Date.now()
    const first = [current.start(env), current.start(env), current.start(env)]
    const total = programs * jobNames.length

    await eventually("the workers started", async () => first.every((worker) => worker.ready()), 120_000, current.logs)
    await eventually("40% of the steps are done", async () => (await current.stepsDone()) >= total * 0.4, 120_000, current.logs)
    // Signal while jobs run, so their finishing within the grace is what is measured.
    let running = 0
    await eventually("jobs are running", async () => {
      running = Number((await current.db.query(
        `SELECT count(*)::int AS n FROM ${current.executionsTable} WHERE finished_at IS NULL`
      )).rows[0].n)
      return running > 0
    }, 60_000, current.logs)
    const signalledAt = Date.now()
    for (const worker of first) worker.child.kill("SIGTERM")
    const exits = await Promise.all(first.map((worker) => worker.exited))
    const exitMillis = exits.map((exit) => exit.at - signalledAt)
    const left = await current.inProgress()

    // Every job the stopped workers started had finished; none started after the signal (but one already taken).
    const { rows: byFirst } = await current.db.query<{ started_at: Date; finished_at: Date | null }>(
      `SELECT started_at, finished_at FROM ${current.executionsTable} WHERE pid = ANY($1)`,
      [first.map((worker) => worker.pid)]
    )
    const interrupted = byFirst.filter((execution) => execution.finished_at === null).length
    const startedLate = byFirst.filter((execution) => execution.started_at.getTime() > signalledAt + 1_000).length
    // Nothing is leased once they are gone: every claimed step completed and advanced, or was given back.
    const leased = await current.leased()

    const restartedAt = Date.now()
    const second = [current.start(env), current.start(env), current.start(env)]
    await eventually("every program finished and no lease is held", async () => (await current.unsettled()) === 0, 180_000, current.logs)
    const wallMillis = Date.now() - began
    const { rows: resumed } = await current.db.query<{ first: Date | null }>(
      `SELECT min(started_at) AS first FROM ${current.executionsTable} WHERE pid = ANY($1)`,
      [second.map((worker) => worker.pid)]
    )
    const report = await current.check(runIds)
    printTable([{
      scenario: "SIGTERM all 3 workers, restart",
      report: { ...report, recoveryMillis: (resumed[0]?.first?.getTime() ?? restartedAt) - restartedAt },
      wallMillis,
      extra: `${running} running at signal, exits after ${exitMillis.join("/")} ms (grace ${graceMillis}), ${left} left`
    }])

    for (const exit of exits) expect(exit.code, current.logs()).toBe(0)
    for (const millis of exitMillis) expect(millis).toBeLessThan(graceMillis)
    expect(interrupted).toBe(0)
    expect(startedLate).toBe(0)
    expect(leased).toBe(0)
    expect(left).toBeGreaterThan(0)
    expect(report.violations).toEqual([])
    expect(report.finished).toBe(programs)
    expect(report.duplicates).toBe(0)
    expect(report.executions).toBe(total)

    for (const exit of await current.stop(second)) expect(exit.code, current.logs()).toBe(0)
  })

  it("a grace shorter than the jobs: running jobs are interrupted, their steps given back and run once more", async () => {
    world = await makeWorld({ databaseUrl: databaseUrl!, amqpUrl: amqpUrl!, prefix: "termint" })
    const current = world
    const graceMillis = 300
    const env = { PE_CONCURRENCY: "4", PE_JOB_DURATION: "1500 millis", PE_SHUTDOWN_GRACE: `${graceMillis} millis` }
    const count = 12
    const runIds = await current.create(count)
    const began = Date.now()
    const first = [current.start(env), current.start(env), current.start(env)]
    const running = async () =>
      Number((await current.db.query(
        `SELECT count(*)::int AS n FROM ${current.executionsTable} WHERE finished_at IS NULL`
      )).rows[0].n)
    await eventually("every worker is running jobs", async () => {
      const { rows } = await current.db.query<{ n: number }>(
        `SELECT count(DISTINCT pid)::int AS n FROM ${current.executionsTable} WHERE finished_at IS NULL`
      )
      return rows[0]!.n === first.length
    }, 120_000, current.logs)
    const signalledAt = Date.now()
    for (const worker of first) worker.child.kill("SIGTERM")
    const exits = await Promise.all(first.map((worker) => worker.exited))
    const exitMillis = exits.map((exit) => exit.at - signalledAt)
    const interrupted = await running()
    // Each interrupted step released its lease on the way out: nothing waits for a lease to expire.
    const leased = await current.leased()

    const restartedAt = Date.now()
    const second = [current.start(env), current.start(env), current.start(env)]
    await eventually("every program finished and no lease is held", async () => (await current.unsettled()) === 0, 180_000, current.logs)
    const wallMillis = Date.now() - began
    // The interrupted jobs may each run once more: they count as having died mid-job.
    const deaths: Array<Death> = first.map((worker) => ({ pid: worker.pid, at: restartedAt }))
    const report = await current.check(runIds, { deaths })
    printTable([{
      scenario: "SIGTERM, grace < job: interrupted",
      report,
      wallMillis,
      extra: `${interrupted} interrupted, exits after ${exitMillis.join("/")} ms (grace ${graceMillis})`
    }])

    for (const exit of exits) expect(exit.code, current.logs()).toBe(0)
    // The grace, then interrupting, releasing and closing the connections.
    for (const millis of exitMillis) expect(millis).toBeLessThan(graceMillis + 5_000)
    expect(interrupted).toBeGreaterThan(0)
    expect(leased).toBe(0)
    expect(report.violations).toEqual([])
    expect(report.finished).toBe(count)
    expect(report.duplicates).toBe(report.duplicatesAfterDeath)
    expect(report.duplicates).toBeLessThanOrEqual(interrupted)

    for (const exit of await current.stop(second)) expect(exit.code, current.logs()).toBe(0)
  })
})
