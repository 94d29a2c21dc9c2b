/**
 * A backlog that drains much slower than `staleAfter`: one worker, 2 at a time, 300 programs × 3 jobs. Every waiting
 * step looks stale by its age alone, but it is only waiting its turn in the queue. The sweeper knows the queue's
 * head (the due time of the steps its worker is starting) and leaves alone what is behind it, so the queue holds
 * about one wake-up per program however long the backlog lasts; before, it gained one per waiting step every
 * `staleAfter` (measured 7.9-9.4× programs), and with the sweeper's back-off alone 4-5×.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import amqp from "amqplib"
import { serviceUrl } from "../../packages/core/test/utils/services.js"
import { printTable } from "./support/check.js"
import { eventually, makeWorld, sleep, type World } from "./support/world.js"

const databaseUrl = serviceUrl("DATABASE_URL")
const amqpUrl = serviceUrl("AMQP_URL")
const describeWithServices = databaseUrl !== undefined && amqpUrl !== undefined ? describe : describe.skip

const programs = 300
const jobs = ["job_1", "job_2", "job_3"]
const staleAfterMillis = 1_000
/**
 * The queue may hold each program's wake-up and about one more: twice the programs (the bound), plus a
 * tenth for sweeps that ran while the worker had started nothing for a while (its start-up).
 */
const maxDepthPerProgram = 2.2

describeWithServices("a backlog draining slower than staleAfter", () => {
  let world: World | undefined
  afterEach(async () => {
    await world?.dispose()
    world = undefined
  })

  it(`${programs} programs × ${jobs.length} jobs on one worker: the sweeper does not flood the queue`, async () => {
    world = await makeWorld({ databaseUrl: databaseUrl!, amqpUrl: amqpUrl!, prefix: "backlog" })
    const current = world
    const worker = current.start({
      PE_CONCURRENCY: "2",
      PE_JOB_DURATION: "20 millis",
      PE_JOBS: jobs.join(","),
      PE_STALE_AFTER: `${staleAfterMillis} millis`,
      PE_SWEEP_INTERVAL: "500 millis"
    })
    // The backlog starts when the worker does: its start-up (seconds under tsx) would age every step before the first
    // sweep, and the figures would measure that instead.
    await eventually("the worker started", async () => worker.ready(), 60_000, current.logs)
    const began = Date.now()
    const runIds = await current.create(programs, jobs)

    // One connection samples the main queue's ready messages every ~200 ms while it drains.
    const connection = await amqp.connect(amqpUrl!)
    const channel = await connection.createChannel()
    const samples: Array<{ readonly at: number; readonly depth: number }> = []
    let sampling = true
    const sampler = (async () => {
      while (sampling) {
        samples.push({ at: Date.now() - began, depth: (await channel.checkQueue(current.name)).messageCount })
        await sleep(200)
      }
    })()
    try {
      const everyTwoSeconds = () => samples.filter((_, index) => index % 10 === 0).map((sample) => sample.depth).join(" ")
      const settled = async () => (await current.unsettled()) === 0
      await eventually("every program finished and no lease is held", settled, 80_000, () =>
        `depth samples ${everyTwoSeconds()}\n${current.logs()}`)
    } finally {
      sampling = false
      await sampler
      await connection.close()
    }
    const wallMillis = Date.now() - began
    const report = await current.check(runIds)
    const maxDepth = Math.max(...samples.map((sample) => sample.depth))
    // The longest a step waited: from its program's creation, or its previous step's end, to its first run.
    const { rows: [longest] } = await current.db.query<{ millis: number }>(
      `WITH steps AS (
         SELECT e.run_id, e.step, min(e.started_at) AS started, max(e.finished_at) AS finished, min(p.created_at) AS created
         FROM ${current.executionsTable} e JOIN ${current.name} p USING (run_id) GROUP BY e.run_id, e.step)
       SELECT max(extract(epoch FROM started - coalesce(
         (SELECT finished FROM steps previous WHERE previous.run_id = steps.run_id AND previous.step = steps.step - 1),
         created)) * 1000)::float AS millis
       FROM steps`
    )
    const waitMillis = longest!.millis
    const republished = worker.output.join("").matchAll(/sweeper re-published (\d+) stale step/g)
    const sweeps = Array.from(republished, (match) => Number(match[1]))
    printTable([{
      scenario: `backlog, staleAfter ${staleAfterMillis / 1000} s`,
      report,
      wallMillis,
      extra: `queue max ${maxDepth} (${(maxDepth / programs).toFixed(2)}× programs, bound ${maxDepthPerProgram.toFixed(2)}×), ` +
        `longest wait ${(waitMillis / 1000).toFixed(1)} s, ` +
        `sweeper re-published ${sweeps.reduce((a, b) => a + b, 0)} in ${sweeps.length} sweeps, ` +
        `depth every 2 s ${samples.filter((_, index) => index % 10 === 0).map((sample) => sample.depth).join(" ")}`
    }])

    expect(report.violations).toEqual([])
    expect(report.finished).toBe(programs)
    // The backlog drained over many staleAfter periods: the sweeper had every chance to flood the queue.
    expect(wallMillis).toBeGreaterThan(10 * staleAfterMillis)
    expect(maxDepth).toBeLessThanOrEqual(maxDepthPerProgram * programs)

    for (const exit of await current.stop([worker])) expect(exit.code, current.logs()).toBe(0)
  })
})
