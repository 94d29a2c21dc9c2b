/**
 * A job that ignores interruption (`Effect.uninterruptible(Effect.never)`: a finalizer that hangs, a Promise that
 * never settles) cannot hold a shutdown: SIGTERM to a worker running such jobs beside normal ones, and the process
 * exits 0 within its grace plus a small margin, the normal jobs having finished and the stubborn steps given back
 * (no lease left). A worker whose jobs all end then runs every program to the end, the stubborn steps once more.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { serviceUrl } from "../../packages/core/test/utils/services.js"
import { printTable } from "./support/check.js"
import { jobNames } from "./support/hooks.js"
import { eventually, makeWorld, type World } from "./support/world.js"

const databaseUrl = serviceUrl("DATABASE_URL")
const amqpUrl = serviceUrl("AMQP_URL")
const describeWithServices = databaseUrl !== undefined && amqpUrl !== undefined ? describe : describe.skip
const normalPrograms = Number(process.env.PE_FAULT_PROGRAMS ?? 200) / 10
const stubbornPrograms = 4
const stubbornJobs = ["stubborn_job", "job_2", "job_3"]

const graceMillis = 1_000
/**
 * From the end of the grace to the exit: giving back each abandoned step (one UPDATE and a nack), closing the AMQP
 * channels and connection and the database pools, and `runMain`'s exit. That takes tens of milliseconds here; 3 s
 * leaves room for a loaded CI machine, while a job that holds the shutdown holds it without bound.
 */
const marginMillis = 3_000

describeWithServices("a shutdown with jobs that ignore interruption", () => {
  let world: World | undefined
  afterEach(async () => {
    await world?.dispose()
    world = undefined
  })

  const title = `${stubbornPrograms} stubborn jobs beside ${normalPrograms} programs: ` +
    "SIGTERM exits within the grace, the steps are given back"
  it(title, async () => {
    world = await makeWorld({ databaseUrl: databaseUrl!, amqpUrl: amqpUrl!, prefix: "stubborn" })
    const current = world
    const env = {
      PE_CONCURRENCY: "8",
      PE_JOB_DURATION: "200 millis",
      PE_JOBS: [...jobNames, "stubborn_job"].join(","),
      PE_SHUTDOWN_GRACE: `${graceMillis} millis`
    }
    const stubbornIds = await current.create(stubbornPrograms, stubbornJobs)
    const normalIds = await current.create(normalPrograms)
    const runIds = [...stubbornIds, ...normalIds]
    const began = Date.now()
    const first = current.start({ ...env, PE_STUBBORN_JOBS: "stubborn_job" })

    const running = async (job: "stubborn" | "normal") =>
      Number((await current.db.query(
        `SELECT count(*)::int AS n FROM ${current.executionsTable}
         WHERE finished_at IS NULL AND (job = 'stubborn_job') = $1`,
        [job === "stubborn"]
      )).rows[0].n)
    const allStubbornRun = async () => (await running("stubborn")) === stubbornPrograms
    await eventually("every stubborn job runs", allStubbornRun, 60_000, current.logs)
    // Normal jobs are running too, so the grace is seen to let them finish while the stubborn ones are abandoned.
    await eventually("normal jobs run beside them", async () => (await running("normal")) > 0, 30_000, current.logs)
    const signalledAt = Date.now()
    first.child.kill("SIGTERM")
    await eventually(
      "the stubborn worker exited",
      async () => !first.alive(),
      graceMillis + marginMillis,
      () => `still alive ${Date.now() - signalledAt} ms after SIGTERM\n${current.logs()}`
    )
    const exit = await first.exited
    const exitMillis = exit.at - signalledAt
    // Every abandoned step was given back on the way out: nothing waits for a lease to expire.
    const leased = await current.leased()
    const interruptedNormal = await running("normal")
    const left = await current.inProgress()

    const restartedAt = Date.now()
    const second = current.start({ ...env, PE_STUBBORN_JOBS: "" })
    const settled = async () => (await current.unsettled()) === 0
    await eventually("every program finished and no lease is held", settled, 60_000, current.logs)
    const wallMillis = Date.now() - began
    // The abandoned runs never finish: they count as runs of a worker that died when it was told to stop.
    const report = await current.check(runIds, { deaths: [{ pid: first.pid, at: signalledAt }] })
    const { rows: reruns } = await current.db.query<{ first: Date | null }>(
      `SELECT min(started_at) AS first FROM ${current.executionsTable} WHERE pid = $1 AND job = 'stubborn_job'`,
      [second.pid]
    )
    printTable([{
      scenario: "SIGTERM with stubborn jobs, restart",
      report: { ...report, recoveryMillis: (reruns[0]?.first?.getTime() ?? restartedAt) - restartedAt },
      wallMillis,
      extra: `exit ${exit.code} after ${exitMillis} ms (grace ${graceMillis} + margin ${marginMillis}), ${left} left`
    }])

    expect(exit.code, current.logs()).toBe(0)
    expect(exitMillis).toBeLessThan(graceMillis + marginMillis)
    expect(first.output.join("")).toContain("shutdown grace elapsed")
    expect(leased).toBe(0)
    expect(interruptedNormal).toBe(0)
    expect(left).toBeGreaterThanOrEqual(stubbornPrograms)
    expect(report.violations).toEqual([])
    expect(report.finished).toBe(runIds.length)
    // The only runs twice: each stubborn step, abandoned once, then run to its end by the second worker.
    expect(report.duplicates).toBe(stubbornPrograms)
    expect(report.duplicatesAfterDeath).toBe(stubbornPrograms)
    const { rows: stubbornRuns } = await current.db.query<{ pid: number; finished: boolean }>(
      `SELECT pid, finished_at IS NOT NULL AS finished FROM ${current.executionsTable} WHERE job = 'stubborn_job'`
    )
    expect(stubbornRuns.filter((run) => run.pid === first.pid && !run.finished)).toHaveLength(stubbornPrograms)
    expect(stubbornRuns.filter((run) => run.pid === second.pid && run.finished)).toHaveLength(stubbornPrograms)

    for (const stopped of await current.stop([second])) expect(stopped.code, current.logs()).toBe(0)
  })
})
