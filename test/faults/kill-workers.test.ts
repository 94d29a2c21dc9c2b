/**
 * kill -9 of one of three worker processes at ~30%, ~50% and ~70% of a run, the killed worker started again each
 * time. Nothing is lost and nothing runs twice, except a job the dead worker had started: that one runs at most once
 * more, elsewhere, once its lease expires.
 *
 * To keep the fault suite within its budget on a 2-core machine, CI runs 200 programs × 5 jobs; the full run is
 * `PE_FAULT_PROGRAMS=500 pnpm test:faults`, and the soak (`pnpm test:soak`) kills workers under continuous load.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { serviceUrl } from "../../packages/core/test/utils/services.js"
import { type Death, printTable } from "./support/check.js"
import { jobNames } from "./support/hooks.js"
import { eventually, makeWorld, type World } from "./support/world.js"

const databaseUrl = serviceUrl("DATABASE_URL")
const amqpUrl = serviceUrl("AMQP_URL")
const describeWithServices = databaseUrl !== undefined && amqpUrl !== undefined ? describe : describe.skip
const programs = Number(process.env.PE_FAULT_PROGRAMS ?? 200)

describeWithServices("kill -9 of a worker process", () => {
  let world: World | undefined
  afterEach(async () => {
    await world?.dispose()
    world = undefined
  })

  it(`${programs} programs × ${jobNames.length} jobs, one of 3 workers killed at ~30%, ~50%, ~70% and restarted`, async () => {
    world = await makeWorld({ databaseUrl: databaseUrl!, amqpUrl: amqpUrl!, prefix: "kill9" })
    const current = world
    const env = { PE_JOB_DURATION: "200 millis" }
    const runIds = await current.create(programs)
    const began = Date.now()
    const slots = [current.start(env), current.start(env), current.start(env)]
    const total = programs * jobNames.length
    const deaths: Array<Death> = []
    const inFlight: Array<number> = []
    const queued: Array<number> = []

    for (const fraction of [0.3, 0.5, 0.7]) {
      await eventually(
        `${fraction * 100}% of the steps are done`,
        async () => (await current.stepsDone()) >= fraction * total,
        120_000,
        current.logs
      )
      // The victim is a worker in the middle of jobs (the one with most running), so the kill lands mid-job.
      let slot = -1
      await eventually("a worker is running jobs", async () => {
        const { rows } = await current.db.query<{ pid: number; n: number }>(
          `SELECT pid, count(*)::int AS n FROM ${current.executionsTable} WHERE finished_at IS NULL GROUP BY pid ORDER BY n DESC`
        )
        const busiest = rows.find((row) => slots.some((worker) => worker.pid === row.pid))
        slot = busiest === undefined ? -1 : slots.findIndex((worker) => worker.pid === busiest.pid)
        return slot >= 0
      }, 60_000, current.logs)
      const victim = slots[slot]!
      victim.child.kill("SIGKILL")
      const exit = await victim.exited
      expect(exit.signal).toBe("SIGKILL")
      deaths.push({ pid: victim.pid, at: exit.at })
      // Steps it held (claimed, not yet advanced: its job running, or done and not recorded): these may run once more.
      // Its worker id is `<host>-<pid>-<random>`.
      inFlight.push(Number((await current.db.query(
        `SELECT count(*)::int AS n FROM ${current.name} WHERE locked_by LIKE '%-' || $1 || '-%'`,
        [String(victim.pid)]
      )).rows[0].n))
      queued.push(await current.queueDepth())
      slots[slot] = current.start(env)
    }

    await eventually("every program finished and no lease is held", async () => (await current.unsettled()) === 0, 120_000, current.logs)
    const wallMillis = Date.now() - began
    const report = await current.check(runIds, { deaths })
    printTable([{ scenario: "kill -9 ×3 (of 3 workers)", report, wallMillis, extra: `steps held at kills ${inFlight.join("/")}, queued ${queued.join("/")}` }])
    expect(report.violations).toEqual([])
    expect(report.finished).toBe(programs)
    expect(report.steps).toBe(total)
    // The kills landed while the victims held steps, and only those steps may have run again.
    expect(inFlight.reduce((a, b) => a + b, 0)).toBeGreaterThan(0)
    expect(report.duplicates).toBeLessThanOrEqual(inFlight.reduce((a, b) => a + b, 0))

    for (const exit of await current.stop(slots)) expect(exit.code, current.logs()).toBe(0)
  })
})
