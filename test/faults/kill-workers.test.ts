/**
 * kill -9 of one of three worker processes at ~30%, ~50% and ~70% of a run, the killed worker started again each
 * time. Nothing is lost and nothing runs twice, except a job the dead worker had started: that one runs at most once
 * more, elsewhere, once its lease expires. The recovery is bounded by the lease: each job the dead worker had started
 * and not finished runs again within `leaseDuration + 2 × recoveryInterval` and a margin of its death, with the sweeper's
 * `staleAfter` far beyond that, so it is the lease recovery that brings them back.
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

const jobMillis = 200
const concurrency = 8
const leaseMillis = 5_000
const recoveryIntervalMillis = 1_000
/**
 * From a death to the re-run's start, beyond the lease's expiry and the next recovery pass: 5 s for the re-publish,
 * the delivery and the claim on a loaded 2-core machine where a replacement worker is starting (tsx compiling), plus
 * the work queued ahead of it. A re-published step goes to the tail of the FIFO queue, behind the wake-ups ready at
 * the kill; with continuation each of those is a chain through the rest of its program (at most all its jobs),
 * drained at the rate the workers kept so far, by the two that survive.
 */
const marginMillis = (queuedAtKill: number, stepsPerSecond: number) =>
  5_000 + Math.ceil((queuedAtKill * jobNames.length) / (stepsPerSecond * 2 / 3) * 1000)

describeWithServices("kill -9 of a worker process", () => {
  let world: World | undefined
  afterEach(async () => {
    await world?.dispose()
    world = undefined
  })

  it(`${programs} programs × ${jobNames.length} jobs, one of 3 workers killed at ~30%, ~50%, ~70% and restarted`, async () => {
    world = await makeWorld({ databaseUrl: databaseUrl!, amqpUrl: amqpUrl!, prefix: "kill9" })
    const current = world
    const env = {
      PE_JOB_DURATION: `${jobMillis} millis`,
      PE_CONCURRENCY: String(concurrency),
      PE_LEASE_DURATION: `${leaseMillis} millis`,
      PE_RECOVERY_INTERVAL: `${recoveryIntervalMillis} millis`,
      // Far beyond the bound measured here: the sweeper cannot be what recovers the dead worker's steps.
      PE_STALE_AFTER: "5 minutes"
    }
    const runIds = await current.create(programs)
    const began = Date.now()
    const slots = [current.start(env), current.start(env), current.start(env)]
    const total = programs * jobNames.length
    const deaths: Array<Death> = []
    const inFlight: Array<number> = []
    const queued: Array<number> = []
    const recoveries: Array<{ readonly steps: number; readonly maxMillis: number; readonly boundMillis: number }> = []

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
      const stepsPerSecond = Math.max(1, (await current.stepsDone()) / ((exit.at - began) / 1000))
      slots[slot] = current.start(env)

      // Each job it had started and not finished runs again (a later run of the same step), within the bound.
      const { rows: held } = await current.db.query<{ run_id: string; step: number; started_at: Date }>(
        `SELECT run_id, step, started_at FROM ${current.executionsTable} WHERE pid = $1 AND finished_at IS NULL`,
        [victim.pid]
      )
      // The lease, a recovery pass, and the random delay (up to one more interval) of the re-published wake-up.
      const boundMillis = leaseMillis + 2 * recoveryIntervalMillis + marginMillis(queued.at(-1)!, stepsPerSecond)
      const rerunAt = new Map<string, number>()
      await eventually(`the ${held.length} job(s) worker ${victim.pid} left unfinished ran again`, async () => {
        const { rows } = await current.db.query<{ run_id: string; step: number; started_at: Date }>(
          `SELECT run_id, step, started_at FROM ${current.executionsTable} WHERE run_id = ANY($1) AND pid <> $2`,
          [held.map((execution) => execution.run_id), victim.pid]
        )
        for (const execution of held) {
          const key = `${execution.run_id}/${execution.step}`
          const later = rows.filter((row) =>
            row.run_id === execution.run_id && row.step === execution.step && row.started_at > execution.started_at
          )
          if (later.length > 0) rerunAt.set(key, Math.min(...later.map((row) => row.started_at.getTime())))
        }
        return rerunAt.size === held.length
      }, boundMillis + 20_000, () => `re-run so far: ${rerunAt.size} of ${held.length}; bound ${boundMillis} ms\n${current.logs()}`)
      recoveries.push({
        steps: held.length,
        maxMillis: Math.max(0, ...Array.from(rerunAt.values(), (at) => at - exit.at)),
        boundMillis
      })
    }

    await eventually("every program finished and no lease is held", async () => (await current.unsettled()) === 0, 120_000, current.logs)
    const wallMillis = Date.now() - began
    const report = await current.check(runIds, { deaths })
    const recovery = recoveries.map((kill) => `${(kill.maxMillis / 1000).toFixed(1)}`).join("/")
    const bounds = recoveries.map((kill) => `${(kill.boundMillis / 1000).toFixed(1)}`).join("/")
    printTable([{
      scenario: "kill -9 ×3 (of 3 workers)",
      report,
      wallMillis,
      extra: `steps held at kills ${inFlight.join("/")}, queued ${queued.join("/")}, ` +
        `unfinished ${recoveries.map((kill) => kill.steps).join("/")} re-run after ${recovery} s (bounds ${bounds} s)`
    }])
    expect(report.violations).toEqual([])
    expect(report.finished).toBe(programs)
    expect(report.steps).toBe(total)
    // The kills landed while the victims held steps, and only those steps may have run again.
    expect(inFlight.reduce((a, b) => a + b, 0)).toBeGreaterThan(0)
    expect(report.duplicates).toBeLessThanOrEqual(inFlight.reduce((a, b) => a + b, 0))
    expect(recoveries.reduce((sum, kill) => sum + kill.steps, 0)).toBeGreaterThan(0)
    for (const kill of recoveries) expect(kill.maxMillis).toBeLessThanOrEqual(kill.boundMillis)

    for (const exit of await current.stop(slots)) expect(exit.code, current.logs()).toBe(0)
  })
})
