/**
 * Soak: continuous program creation on PostgreSQL + RabbitMQ with worker processes, one of them killed with -9 and
 * restarted every `SOAK_KILL_EVERY` seconds, for `SOAK_SECONDS`. Prints steps/s and each worker's RSS over time (with
 * the slope of the worker that is never killed, which must stay flat), then waits for every program to finish and
 * checks the fault suite's invariants. Exits 1 on a violation or a growing RSS.
 *
 *   pnpm test:soak                      # 10 minutes
 *   SOAK_SECONDS=180 pnpm test:soak     # 3 minutes
 *
 * Environment: DATABASE_URL, AMQP_URL (default: the local services), SOAK_SECONDS (600), SOAK_RATE (programs created
 * per second, 20), SOAK_WORKERS (3), SOAK_KILL_EVERY (30), SOAK_SAMPLE_EVERY (10), SOAK_JOB_DURATION ("20 millis"),
 * SOAK_MAX_RSS_SLOPE (MiB per minute allowed for the worker never killed, after warm-up; 1), SOAK_MAX_BACKLOG (steps
 * created and not yet done above which creation pauses, so a slow machine is soaked, not overloaded; 2000).
 */
import { type Death, printTable } from "../faults/support/check.js"
import { jobNames } from "../faults/support/hooks.js"
import { eventually, makeWorld, rssMiB, sleep, type Worker } from "../faults/support/world.js"

const number = (name: string, fallback: number) => {
  const value = Number(process.env[name] ?? fallback)
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name} must be a non-negative number`)
  return value
}
const seconds = number("SOAK_SECONDS", 600)
const rate = number("SOAK_RATE", 20)
const workerCount = Math.max(2, number("SOAK_WORKERS", 3))
const killEvery = number("SOAK_KILL_EVERY", 30)
const sampleEvery = number("SOAK_SAMPLE_EVERY", 10)
const maxSlope = number("SOAK_MAX_RSS_SLOPE", 1)
const maxBacklog = number("SOAK_MAX_BACKLOG", 2000)
// Sweeps less eager than the fault suite's: over minutes a backlog older than `staleAfter` is normal, and each sweep
// re-publishes every step of it, again at every sweep until it runs.
const env = {
  PE_JOB_DURATION: process.env.SOAK_JOB_DURATION ?? "20 millis",
  PE_STALE_AFTER: process.env.PE_STALE_AFTER ?? "20 seconds",
  PE_SWEEP_INTERVAL: process.env.PE_SWEEP_INTERVAL ?? "5 seconds"
}

/** Least-squares slope of y over x. */
const slope = (points: ReadonlyArray<readonly [number, number]>) => {
  const n = points.length
  const mx = points.reduce((sum, [x]) => sum + x, 0) / n
  const my = points.reduce((sum, [, y]) => sum + y, 0) / n
  const sxy = points.reduce((sum, [x, y]) => sum + (x - mx) * (y - my), 0)
  const sxx = points.reduce((sum, [x]) => sum + (x - mx) ** 2, 0)
  return sxx === 0 ? 0 : sxy / sxx
}

const world = await makeWorld({
  databaseUrl: process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test",
  amqpUrl: process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672",
  prefix: "soak"
})
let failed = false
// Interrupted (Ctrl-C): leave no worker process, table or queue behind.
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    console.log(`${signal}: stopping the workers and dropping ${world.name}`)
    world.dispose().finally(() => process.exit(130))
  })
}
try {
  console.log(
    `soak: ${seconds} s, ${rate} programs/s × ${jobNames.length} jobs, ${workerCount} workers, kill -9 every ${killEvery} s ` +
      `(slot 0 never killed), table ${world.name}`
  )
  const slots: Array<Worker> = Array.from({ length: workerCount }, () => world.start(env))
  const witness = slots[0]!
  // Under load a worker takes seconds to start: the clock starts when all of them consume.
  await eventually(
    "every worker started",
    async () => slots.every((worker) => worker.output.join("").includes("worker started")),
    120_000,
    world.logs
  )
  const deaths: Array<Death> = []
  const runIds: Array<string> = []
  const began = Date.now()
  const endAt = began + seconds * 1000
  let creating = true

  let createErrors = 0
  let throttled = 0
  let lastSteps = 0
  const creator = (async () => {
    let attempted = 0
    while (Date.now() < endAt) {
      const due = Math.floor(((Date.now() - began) / 1000) * rate)
      // Steady load, not overload: creation pauses while the backlog is over its bound, and does not catch up later.
      if (due > attempted && (runIds.length * jobNames.length - lastSteps) > maxBacklog) {
        throttled += due - attempted
        attempted = due
      }
      if (due > attempted) {
        const batch = Math.min(due - attempted, rate * 5)
        attempted += batch
        try {
          const result = await world.createSettled(batch)
          runIds.push(...result.runIds)
          if (result.errors.length > 0) {
            createErrors += result.errors.length
            console.log(`${result.errors.length} creation(s) failed: ${result.errors[0]}`)
          }
        } catch (error) {
          createErrors += batch
          console.log(`creating ${batch} program(s) failed: ${String(error)}`)
        }
      }
      await sleep(100)
    }
  })().finally(() => {
    creating = false
  })

  const killer = (async () => {
    let next = 1
    while (killEvery > 0 && Date.now() + killEvery * 1000 < endAt) {
      await sleep(killEvery * 1000)
      const slot = next
      next = next % (workerCount - 1) + 1
      const victim = slots[slot]!
      victim.child.kill("SIGKILL")
      const exit = await victim.exited
      deaths.push({ pid: victim.pid, at: exit.at })
      slots[slot] = world.start(env)
    }
  })()

  interface Sample {
    readonly at: number
    readonly steps: number
    readonly rss: ReadonlyArray<{ readonly pid: number; readonly mib: number | undefined }>
  }
  const samples: Array<Sample> = []
  console.log(
    ["t (s)", "steps", "steps/s", ...slots.map((_, index) => `rss w${index} (MiB)`), "backlog", "queued"].join("\t")
  )
  while (creating) {
    // A sample is skipped, not the soak, when the shared database refuses a connection for a moment.
    const steps = await world.stepsDone().catch(() => samples.at(-1)?.steps ?? 0)
    lastSteps = steps
    const sample: Sample = {
      at: Date.now(),
      steps,
      rss: slots.map((worker) => ({ pid: worker.pid, mib: rssMiB(worker.pid) }))
    }
    const previous = samples.at(-1)
    samples.push(sample)
    const perSecond = previous === undefined ? 0 : (steps - previous.steps) / ((sample.at - previous.at) / 1000)
    const backlog = runIds.length * jobNames.length - steps
    // Wake-ups waiting in the queue, duplicates included: against the backlog it shows the sweeper's re-publishing.
    const queued = await world.queueDepth().catch(() => undefined)
    console.log([
      ((sample.at - began) / 1000).toFixed(0),
      steps,
      perSecond.toFixed(0),
      ...sample.rss.map(({ mib, pid }) => `${mib?.toFixed(1) ?? "-"}${pid === witness.pid ? "" : ` (${pid})`}`),
      backlog,
      queued ?? "-"
    ].join("\t"))
    await sleep(sampleEvery * 1000)
  }
  await Promise.all([creator, killer])

  const loadEnded = Date.now()
  await eventually("every program finished and no lease is held", async () => (await world.unsettled()) === 0, 600_000, world.logs)
  const wallMillis = Date.now() - began
  const report = await world.check(runIds, { deaths })
  printTable([{
    scenario: `soak ${seconds} s`,
    report,
    wallMillis,
    extra: `${deaths.length} kills, drained ${((Date.now() - loadEnded) / 1000).toFixed(1)} s after the load stopped`
  }])

  // RSS of the worker never killed, after a warm-up of a fifth of the run (at least one minute of samples left).
  const warm = samples.filter((sample) => sample.at - began >= (seconds * 1000) / 5)
  const points = warm.flatMap((sample) => {
    const mib = sample.rss[0]!.mib
    return mib === undefined ? [] : [[(sample.at - began) / 60_000, mib] as const]
  })
  const rssSlope = points.length >= 3 ? slope(points) : 0
  const rssValues = points.map(([, mib]) => mib)
  console.log(
    `worker 0 (pid ${witness.pid}, never killed): RSS ${Math.min(...rssValues).toFixed(1)}–${
      Math.max(...rssValues).toFixed(1)
    } MiB after warm-up, slope ${rssSlope.toFixed(2)} MiB/min over ${points.length} samples (limit ${maxSlope})`
  )
  console.log(
    `steps/s over the load: ${(report.steps / (wallMillis / 1000)).toFixed(0)}; programs ${runIds.length} ` +
      `(${createErrors} creations refused by the database, ${throttled} skipped by the backlog bound); ` +
      `recovery after a kill at most ${(report.recoveryMillis / 1000).toFixed(1)} s`
  )
  if (report.violations.length > 0) {
    failed = true
    console.log(`VIOLATIONS:\n${report.violations.join("\n")}`)
  }
  if (report.finished !== runIds.length) failed = true
  if (rssSlope > maxSlope) {
    failed = true
    console.log(`RSS grows by ${rssSlope.toFixed(2)} MiB/min, over the limit of ${maxSlope}`)
  }
  const exits = await world.stop(slots)
  for (const [index, worker] of slots.entries()) {
    const exit = exits[index]!
    if (exit.code !== 0) {
      failed = true
      console.log(`worker ${worker.pid} exited with ${exit.code ?? exit.signal} on SIGTERM`)
    }
  }
} catch (error) {
  failed = true
  console.error(error)
  console.error(world.logs())
} finally {
  await world.dispose()
}
console.log(failed ? "soak FAILED" : "soak passed")
process.exit(failed ? 1 : 0)
