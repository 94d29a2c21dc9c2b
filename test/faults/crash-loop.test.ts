/**
 * A job that crashes its worker process (`process.exit(1)` mid-job) must not crash workers forever: each run of it is
 * lost (no outcome is recorded), the next claim counts the lost run, and once a step's lost runs exceed
 * `maxLostRuns` the program is failed at the claim without running the job. Meanwhile healthy programs share the
 * same workers, which a supervisor restarts whenever one exits; they all finish, and the exits stop.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { serviceUrl } from "../../packages/core/test/utils/services.js"
import { type Death, printTable } from "./support/check.js"
import { eventually, type Exit, makeWorld, sleep, type Worker, type World } from "./support/world.js"

const databaseUrl = serviceUrl("DATABASE_URL")
const amqpUrl = serviceUrl("AMQP_URL")
const describeWithServices = databaseUrl !== undefined && amqpUrl !== undefined ? describe : describe.skip

const maxLostRuns = 3
const leaseMillis = 2_000
const recoveryMillis = 1_000
const healthyJobs = ["job_1", "job_2", "job_3", "job_4"]
const crashingJobs = ["job_1", "crash_job", "job_3"]
/** A supervisor restarting a worker more often than this is restarting a loop. */
const maxRestarts = 30

describeWithServices("a job that kills its worker process", () => {
  let world: World | undefined
  let supervising = false
  let feeding = false
  afterEach(async () => {
    supervising = false
    feeding = false
    await world?.dispose()
    world = undefined
  })

  it(`fails after ${maxLostRuns + 1} lost runs, while healthy programs on the same restarted workers finish`, async () => {
    world = await makeWorld({ databaseUrl: databaseUrl!, amqpUrl: amqpUrl!, prefix: "crash" })
    const current = world
    const env = {
      PE_CONCURRENCY: "4",
      PE_JOB_DURATION: "150 millis",
      PE_JOBS: [...healthyJobs, "crash_job"].join(","),
      PE_CRASH_JOBS: "crash_job",
      PE_LEASE_DURATION: `${leaseMillis} millis`,
      PE_HEARTBEAT_INTERVAL: "400 millis",
      PE_RECOVERY_INTERVAL: `${recoveryMillis} millis`,
      PE_MAX_LOST_RUNS: String(maxLostRuns)
    }
    const began = Date.now()

    // The supervisor: a worker that exits while the test is not stopping it is started again, in the same slot.
    const exits: Array<Exit & { readonly pid: number }> = []
    const slots: Array<Worker> = []
    const supervise = (slot: number) => {
      const worker = current.start(env)
      slots[slot] = worker
      void worker.exited.then((exit) => {
        if (!supervising) return
        exits.push({ ...exit, pid: worker.pid })
        if (exits.length <= maxRestarts) supervise(slot)
      })
    }
    supervising = true
    for (const slot of [0, 1, 2]) supervise(slot)

    // Healthy programs keep arriving while the crashing one is retried (a handful in progress at a time), so the
    // workers that die are running healthy jobs too.
    // The feeder runs beside the waits below, so a creation held up by a broker or database that stopped answering
    // cannot hold up their deadlines.
    const healthy: Array<string> = []
    feeding = true
    const feeder = (async () => {
      while (feeding) {
        const inProgress = await current.inProgress()
        if (inProgress < 10) healthy.push(...await current.create(10 - inProgress, healthyJobs))
        await sleep(200)
      }
    })()
    const [crashing] = await current.create(1, crashingJobs)
    const explain = () =>
      `${exits.length} exit(s): ` +
      `${exits.map((exit) => `${exit.pid} code ${exit.code} at ${new Date(exit.at).toISOString()}`).join(", ")}\n` +
      current.logs()
    const program = async () =>
      (await current.db.query<{ errored_at: Date | null; error_message: string | null; step: number }>(
        `SELECT errored_at, error_message, step FROM ${current.name} WHERE run_id = $1`,
        [crashing]
      )).rows[0]!
    const crashRuns = async () =>
      Number((await current.db.query(
        `SELECT count(*)::int AS n FROM ${current.executionsTable} WHERE run_id = $1 AND job = 'crash_job'`,
        [crashing]
      )).rows[0].n)

    const crashRunsText = async () =>
      (await current.db.query<{ pid: number; attempt: number; started_at: Date }>(
        `SELECT pid, attempt, started_at FROM ${current.executionsTable} WHERE run_id = $1 AND job = 'crash_job' ORDER BY id`,
        [crashing]
      )).rows.map((row) => `${row.pid} attempt ${row.attempt} ${row.started_at.toISOString().slice(11, 23)}`).join(", ")
    await eventually("the crashing program errored", async () => {
      // More exits than lost runs allowed: the crash loops (checked first, so a loop fails fast).
      if (exits.length > maxLostRuns + 1) {
        throw new Error(`the crashing job loops: runs ${await crashRunsText()}; ${explain().slice(0, 600)}`)
      }
      return (await program()).errored_at !== null
    }, 90_000, explain)
    const erroredAt = (await program()).errored_at!.getTime()
    const exitsAtError = exits.length

    // Observation: healthy programs keep running for longer than a recovery cycle (a lease and a recovery interval,
    // plus the margin a restarted worker needs to start), so a step of the crashing program published again after
    // the error would be claimed and crash a worker within it.
    const observeMillis = leaseMillis + recoveryMillis + 3_000
    await eventually("healthy programs ran for a recovery cycle after the error", async () => {
      if (exits.length > exitsAtError) throw new Error(`a worker exited after the error: ${explain()}`)
      return Date.now() - erroredAt > observeMillis
    }, 60_000, explain).finally(() => {
      feeding = false
    })
    await feeder
    const settled = async () => (await current.unsettled()) === 0
    await eventually("every healthy program finished and no lease is held", settled, 60_000, explain)
    const wallMillis = Date.now() - began
    supervising = false

    const deaths: Array<Death> = exits.map((exit) => ({ pid: exit.pid, at: exit.at }))
    // The engine writes "lost 4 time(s) running job …".
    const lostRuns = /lost (\d+) time(?:s|\(s\)) running job/
    const report = await current.check([...healthy, crashing!], {
      deaths,
      expectErrors: new Map([[crashing!, { message: lostRuns, step: 1 }]])
    })
    const { error_message } = await program()
    const runs = await crashRuns()
    printTable([{
      scenario: `crash loop (maxLostRuns ${maxLostRuns})`,
      report,
      wallMillis,
      extra: `crash runs ${runs} at ${await crashRunsText()}, error at ${new Date(erroredAt).toISOString()}; ` +
        `exits ${exits.length} (${exitsAtError} at error), ${healthy.length} healthy; ${error_message}`
    }])

    expect(report.violations).toEqual([])
    expect(report.finished).toBe(healthy.length)
    expect(report.errored).toBe(1)
    expect(error_message).toContain("crash_job")
    expect(Number(lostRuns.exec(error_message ?? "")?.[1])).toBe(maxLostRuns + 1)
    expect(runs).toBe(maxLostRuns + 1)
    expect(exits.map((exit) => exit.code)).toEqual(Array.from({ length: maxLostRuns + 1 }, () => 1))
    expect(exits.length).toBe(exitsAtError)

    for (const exit of await current.stop(slots)) expect(exit.code, current.logs()).toBe(0)
  })
})
