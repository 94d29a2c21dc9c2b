/**
 * Faults in the middle of chains (continuation, DESIGN.md 3b): programs of 20 jobs, each run as one chain of steps on
 * the worker that took its first wake-up, with a fault landing while the chains are mid-way.
 * - kill -9 of the busiest worker, restarted: the step each dead chain held was claimed by continuation (no message
 *   carries it), and still runs again within `leaseDuration + 2 × recoveryInterval` and a margin of the death, with
 *   `staleAfter` far beyond that; everything finishes, and only the steps the dead worker held ran twice.
 * - cancel of running programs (`ProgramExecutor.cancel`): each ends errored at the step where it was cancelled, no
 *   later step ever starts (a continuation refuses a cancelled program), its lease is released or expires within one
 *   `leaseDuration` of the cancel (never extended after it), and the other programs finish with nothing run twice.
 * - SIGTERM to the busiest worker, a grace longer than the jobs: it exits 0, its chains stop at their running step (no
 *   chain starts another step on it after the signal), their next steps run elsewhere, and nothing runs twice.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { serviceUrl } from "../../packages/core/test/utils/services.js"
import { type Death, printTable } from "./support/check.js"
import { eventually, makeWorld, type World } from "./support/world.js"

const databaseUrl = serviceUrl("DATABASE_URL")
const amqpUrl = serviceUrl("AMQP_URL")
const describeWithServices = databaseUrl !== undefined && amqpUrl !== undefined ? describe : describe.skip

/** 20 jobs: with the default `maxConsecutiveSteps` (20), a program's whole run is one chain. */
const chainJobs = Array.from({ length: 20 }, (_, index) => `chain_${String(index + 1).padStart(2, "0")}`)
const concurrency = 4
const leaseMillis = 5_000

/** The worker of `pids` with most chains mid-way (a continued step's job running now), with those steps. */
const busiestMidChain = async (
  world: World,
  pids: ReadonlyArray<number>
): Promise<[number, Array<{ run_id: string; step: number }>] | undefined> => {
  const { rows } = await world.db.query<{ pid: number; run_id: string; step: number }>(
    `SELECT pid, run_id, step FROM ${world.executionsTable}
     WHERE finished_at IS NULL AND step BETWEEN 1 AND $1 AND pid = ANY($2)`,
    [chainJobs.length - 3, pids]
  )
  const byPid = new Map<number, Array<{ run_id: string; step: number }>>()
  for (const row of rows) byPid.set(row.pid, [...(byPid.get(row.pid) ?? []), row])
  return Array.from(byPid.entries()).sort((a, b) => b[1].length - a[1].length)[0]
}

/**
 * When a worker logged a line containing `text`, in ms since the epoch, or `near` when it did not. Its pretty logger
 * prints the time of day only, in the worker's time zone (UTC here: see `TZ`): the day is the one putting it nearest
 * to `near`.
 */
const loggedAt = (output: string, text: string, near: number) => {
  const plain = output.replace(/\x1b\[[0-9;]*m/g, "")
  const line = plain.split("\n").find((candidate) => candidate.includes(text))
  const time = line === undefined ? null : /\[(\d\d):(\d\d):(\d\d)\.(\d{3})\]/.exec(line)
  if (time === null) return near
  const day = new Date(near)
  const at = Date.UTC(day.getUTCFullYear(), day.getUTCMonth(), day.getUTCDate(), ...time.slice(1, 5).map(Number))
  return [at - 86_400_000, at, at + 86_400_000].sort((a, b) => Math.abs(a - near) - Math.abs(b - near))[0]!
}

/** Programs of `runIds` unfinished, or still holding a lease. */
const unsettled = async (world: World, runIds: ReadonlyArray<string>) =>
  Number((await world.db.query(
    `SELECT count(*)::int AS n FROM ${world.name} WHERE run_id = ANY($1)
     AND ((finished_at IS NULL AND errored_at IS NULL) OR locked_by IS NOT NULL OR locked_until IS NOT NULL)`,
    [runIds]
  )).rows[0].n)

describeWithServices("faults in the middle of chains", () => {
  let world: World | undefined
  afterEach(async () => {
    await world?.dispose()
    world = undefined
  })

  it("kill -9 of the busiest of 3 workers mid-chains: its held steps run again within the lease", async () => {
    world = await makeWorld({ databaseUrl: databaseUrl!, amqpUrl: amqpUrl!, prefix: "chkill" })
    const current = world
    const jobMillis = 200
    const recoveryIntervalMillis = 1_000
    const env = {
      PE_JOBS: chainJobs.join(","),
      PE_JOB_DURATION: `${jobMillis} millis`,
      PE_CONCURRENCY: String(concurrency),
      PE_LEASE_DURATION: `${leaseMillis} millis`,
      PE_RECOVERY_INTERVAL: `${recoveryIntervalMillis} millis`,
      // Far beyond the bound measured here: the sweeper cannot be what recovers the dead worker's steps.
      PE_STALE_AFTER: "5 minutes"
    }
    const programs = 16
    const total = programs * chainJobs.length
    const runIds = await current.create(programs, chainJobs)
    const began = Date.now()
    const slots = [current.start(env), current.start(env), current.start(env)]

    const done = (fraction: number) => async () => (await current.stepsDone()) >= fraction * total
    await eventually("30% of the steps are done", done(0.3), 120_000, current.logs)
    let busiest: Awaited<ReturnType<typeof busiestMidChain>> = undefined
    await eventually("a worker is mid-chains", async () => {
      busiest = await busiestMidChain(current, slots.map((worker) => worker.pid))
      return busiest !== undefined
    }, 60_000, current.logs)
    const slot = slots.findIndex((worker) => worker.pid === busiest![0])
    const victim = slots[slot]!
    victim.child.kill("SIGKILL")
    const exit = await victim.exited
    expect(exit.signal).toBe("SIGKILL")
    const deaths: Array<Death> = [{ pid: victim.pid, at: exit.at }]
    // Steps it held (its worker id is `<host>-<pid>-<random>`): claimed by continuation or delivered, not advanced.
    const inFlight = Number((await current.db.query(
      `SELECT count(*)::int AS n FROM ${current.name} WHERE locked_by LIKE '%-' || $1 || '-%'`,
      [String(victim.pid)]
    )).rows[0].n)
    const queued = await current.queueDepth()
    slots[slot] = current.start(env)

    const { rows: held } = await current.db.query<{ run_id: string; step: number; started_at: Date }>(
      `SELECT run_id, step, started_at FROM ${current.executionsTable} WHERE pid = $1 AND finished_at IS NULL`,
      [victim.pid]
    )
    // The lease, a recovery pass and the random delay of the re-published wake-up; 5 s for the delivery and the claim
    // on a loaded machine where the replacement is starting; and the chains queued ahead of the re-published step,
    // each holding a slot of the two surviving workers for up to a whole program.
    const boundMillis = leaseMillis + 2 * recoveryIntervalMillis + 5_000 +
      Math.ceil(queued / (2 * concurrency)) * chainJobs.length * jobMillis
    const rerunAt = new Map<string, number>()
    const explain = () => `re-run ${rerunAt.size} of ${held.length} (bound ${boundMillis} ms)\n${current.logs()}`
    await eventually(`the ${held.length} step(s) worker ${victim.pid} left unfinished ran again`, async () => {
      const { rows } = await current.db.query<{ run_id: string; step: number; started_at: Date }>(
        `SELECT run_id, step, started_at FROM ${current.executionsTable} WHERE run_id = ANY($1) AND pid <> $2`,
        [held.map((execution) => execution.run_id), victim.pid]
      )
      for (const execution of held) {
        const later = rows.filter((row) =>
          row.run_id === execution.run_id && row.step === execution.step && row.started_at > execution.started_at
        )
        const first = Math.min(...later.map((row) => row.started_at.getTime()))
        if (later.length > 0) rerunAt.set(`${execution.run_id}/${execution.step}`, first)
      }
      return rerunAt.size === held.length
    }, boundMillis + 20_000, explain)
    const recoveryMillis = Math.max(0, ...Array.from(rerunAt.values(), (at) => at - exit.at))

    const settled = async () => (await current.unsettled()) === 0
    await eventually("every program finished, no lease held", settled, 120_000, current.logs)
    const wallMillis = Date.now() - began
    const report = await current.check(runIds, { deaths })
    printTable([{
      scenario: "chains: kill -9 mid-chain",
      report,
      wallMillis,
      extra: `steps held at kill ${inFlight}, queued ${queued}, unfinished ${held.length} (steps ` +
        `${held.map((execution) => execution.step).join(",")}) re-run after ${(recoveryMillis / 1000).toFixed(1)} s ` +
        `(bound ${(boundMillis / 1000).toFixed(1)} s)`
    }])
    expect(report.violations).toEqual([])
    expect(report.finished).toBe(programs)
    expect(report.steps).toBe(total)
    // The kill landed in the middle of chains: steps past the first, claimed by continuation.
    expect(held.some((execution) => execution.step > 0)).toBe(true)
    expect(inFlight).toBeGreaterThan(0)
    expect(report.duplicates).toBe(report.duplicatesAfterDeath)
    expect(report.duplicates).toBeLessThanOrEqual(inFlight)
    expect(recoveryMillis).toBeLessThanOrEqual(boundMillis)

    for (const exit of await current.stop(slots)) expect(exit.code, current.logs()).toBe(0)
  })

  it("cancel of running programs mid-chain: no later step starts, their leases end, the others finish", async () => {
    world = await makeWorld({ databaseUrl: databaseUrl!, amqpUrl: amqpUrl!, prefix: "chcancel" })
    const current = world
    const env = {
      PE_JOBS: chainJobs.join(","),
      // Shorter than the heartbeat (500 ms): most cancelled jobs complete before it sees the cancel, so it is the
      // continuation that must refuse the program; the others are interrupted by the heartbeat.
      PE_JOB_DURATION: "150 millis",
      PE_CONCURRENCY: String(concurrency),
      PE_LEASE_DURATION: `${leaseMillis} millis`
    }
    const programs = 16
    const runIds = await current.create(programs, chainJobs)
    const began = Date.now()
    const workers = [current.start(env), current.start(env)]
    const reason = "cancelled in the middle of its chain"

    // Programs whose continued step is running now, mid-way through their chain.
    let running: Array<string> = []
    await eventually("6 programs are mid-chain", async () => {
      const { rows } = await current.db.query<{ run_id: string }>(
        `SELECT DISTINCT run_id FROM ${current.executionsTable} WHERE finished_at IS NULL AND step BETWEEN 2 AND $1`,
        [chainJobs.length - 4]
      )
      running = rows.map((row) => row.run_id)
      return running.length >= 6
    }, 120_000, current.logs)
    const cancelled = new Map<string, number>()
    for (const runId of running.slice(0, 4)) cancelled.set(runId, (await current.cancel(runId, reason)).step)
    const cancelledAt = Date.now()
    const cancelledIds = Array.from(cancelled.keys())
    const others = runIds.filter((runId) => !cancelled.has(runId))

    // A cancelled program's lease is not extended after the cancel, and is released: by the heartbeat that sees the
    // cancel, or, when the run completed first, once its advance (or continuation) is refused. Nothing claims it
    // again.
    const leaseAfterCancel = async () =>
      (await current.db.query<{ run_id: string; millis: number | null; held: boolean; owner: string | null }>(
        `SELECT run_id, (extract(epoch FROM locked_until - errored_at) * 1000)::int AS millis,
         coalesce(locked_until > now(), false) AS held, locked_by AS owner FROM ${current.name} WHERE run_id = ANY($1)`,
        [cancelledIds]
      )).rows
    await eventually(
      "the cancelled programs' leases released",
      async () => (await leaseAfterCancel()).every((row) => !row.held && row.owner === null),
      Math.max(1, cancelledAt + leaseMillis + 5_000 - Date.now()),
      current.logs
    )
    const leases = await leaseAfterCancel()
    // `errored_at` is the cancel's `now()`, when its statement began: an extension or a continuation that took the
    // row just before it may have begun a little later (a second is ample).
    const overdue = leases.filter((row) => row.millis !== null && row.millis > leaseMillis + 1_000)
    await eventually("every other program finished and no lease of theirs is held", async () =>
      (await unsettled(current, others)) === 0, 120_000, current.logs)
    // Meanwhile no worker claimed a cancelled program again.
    const leasedAgain = (await leaseAfterCancel()).filter((row) => row.held || (row.millis ?? 0) > leaseMillis + 1_000)
    const wallMillis = Date.now() - began

    const { rows } = await current.db.query<
      {
        run_id: string
        step: number
        finished_at: Date | null
        errored_at: Date | null
        error_message: string | null
        locked_by: string | null
      }
    >(
      `SELECT run_id, step, finished_at, errored_at, error_message, locked_by FROM ${current.name}
       WHERE run_id = ANY($1)`,
      [cancelledIds]
    )
    const { rows: executions } = await current.db.query<{ run_id: string; step: number; finished_at: Date | null }>(
      `SELECT run_id, step, finished_at FROM ${current.executionsTable} WHERE run_id = ANY($1) ORDER BY id`,
      [cancelledIds]
    )
    const problems: Array<string> = []
    for (const row of rows) {
      const step = cancelled.get(row.run_id)!
      if (row.finished_at !== null || row.errored_at === null || row.error_message !== reason) {
        problems.push(`${row.run_id}: not errored with the reason (finished ${row.finished_at}, ${row.error_message})`)
      }
      if (row.step !== step) problems.push(`${row.run_id}: cancelled at step ${step}, now at ${row.step}`)
      const own = executions.filter((execution) => execution.run_id === row.run_id)
      for (const execution of own) {
        if (execution.step > step) {
          problems.push(`${row.run_id}: step ${execution.step} started after the cancel at ${step}`)
        }
        // Only the step running at the cancel may have been interrupted.
        if (execution.finished_at === null && execution.step !== step) {
          problems.push(`${row.run_id}: step ${execution.step} never finished`)
        }
      }
      for (let before = 0; before <= step; before++) {
        const runs = own.filter((execution) => execution.step === before).length
        if (runs > 1 || (runs === 0 && before < step)) {
          problems.push(`${row.run_id}: step ${before} ran ${runs} time(s)`)
        }
      }
    }
    const report = await current.check(others)
    printTable([{
      scenario: "chains: cancel mid-chain",
      report,
      wallMillis,
      extra: `${cancelled.size} cancelled at steps ${Array.from(cancelled.values()).join(",")}, ` +
        `${rows.filter((row) => row.locked_by === null).length} released, the others' leases ended ` +
        `${leases.map((row) => row.millis ?? "-").join(",")} ms after the cancel`
    }])
    expect(problems).toEqual([])
    expect(rows.length).toBe(cancelled.size)
    expect(rows.filter((row) => row.locked_by !== null)).toEqual([])
    expect(cancelled.size).toBe(4)
    expect(overdue).toEqual([])
    expect(leasedAgain).toEqual([])
    expect(report.violations).toEqual([])
    expect(report.finished).toBe(others.length)
    expect(report.duplicates).toBe(0)

    for (const exit of await current.stop(workers)) expect(exit.code, current.logs()).toBe(0)
  })

  it("SIGTERM to the busiest of 3 workers mid-chains: its chains stop at their running step", async () => {
    world = await makeWorld({ databaseUrl: databaseUrl!, amqpUrl: amqpUrl!, prefix: "chterm" })
    const current = world
    const graceMillis = 8_000
    const env = {
      PE_JOBS: chainJobs.join(","),
      PE_JOB_DURATION: "250 millis",
      PE_CONCURRENCY: String(concurrency),
      PE_SHUTDOWN_GRACE: `${graceMillis} millis`,
      // Its log lines carry the time of day: read in UTC (see `loggedAt`).
      TZ: "UTC"
    }
    const programs = 16
    const total = programs * chainJobs.length
    const runIds = await current.create(programs, chainJobs)
    const began = Date.now()
    const workers = [current.start(env), current.start(env), current.start(env)]

    const ready = async () => workers.every((worker) => worker.ready())
    await eventually("the workers started", ready, 120_000, current.logs)
    const done = async () => (await current.stepsDone()) >= 0.25 * total
    await eventually("25% of the steps are done", done, 120_000, current.logs)
    let busiest: Awaited<ReturnType<typeof busiestMidChain>> = undefined
    await eventually("a worker is mid-chains", async () => {
      busiest = await busiestMidChain(current, workers.map((worker) => worker.pid))
      return busiest !== undefined && busiest[1].length >= 2
    }, 60_000, current.logs)
    const victim = workers.find((worker) => worker.pid === busiest![0])!
    const signalledAt = Date.now()
    victim.child.kill("SIGTERM")
    const exit = await victim.exited
    const exitMillis = exit.at - signalledAt
    const { rows: byVictim } = await current.db.query<
      { run_id: string; step: number; started_at: Date; finished_at: Date | null }
    >(
      `SELECT run_id, step, started_at, finished_at FROM ${current.executionsTable} WHERE pid = $1`,
      [victim.pid]
    )
    // When its shutdown began (it stopped consuming, then ended its chains), by its own log line.
    const shutdownAt = loggedAt(victim.output.join(""), "shutting down: waiting for", signalledAt)
    // From then on a chain starts at most the step its continuation was already claiming; and nothing starts later
    // than just after the signal (the handler runs within a second on a loaded machine, as in graceful-shutdown).
    const late = byVictim.filter((execution) => execution.started_at.getTime() > signalledAt)
    const lateByRun = new Map<string, number>()
    for (const execution of late) {
      if (execution.started_at.getTime() > shutdownAt) {
        lateByRun.set(execution.run_id, (lateByRun.get(execution.run_id) ?? 0) + 1)
      }
    }
    const chainedOn = Array.from(lateByRun.entries()).filter(([, runs]) => runs > 1)
    const startedLate = late.filter((execution) => execution.started_at.getTime() > signalledAt + 1_000)
    const interrupted = byVictim.filter((execution) => execution.finished_at === null).length
    // Nothing is leased by it once it is gone: each chain's last step advanced and its next step was published.
    const leased = Number((await current.db.query(
      `SELECT count(*)::int AS n FROM ${current.name} WHERE locked_by LIKE '%-' || $1 || '-%'`,
      [String(victim.pid)]
    )).rows[0].n)
    const restarted = current.start(env)
    const survivors = [...workers.filter((worker) => worker !== victim), restarted]

    const settled = async () => (await current.unsettled()) === 0
    await eventually("every program finished, no lease held", settled, 120_000, current.logs)
    const wallMillis = Date.now() - began
    // The chains running on it at the signal went on elsewhere from their next step.
    const stoppedAt = new Map<string, number>()
    for (const execution of byVictim) {
      stoppedAt.set(execution.run_id, Math.max(stoppedAt.get(execution.run_id) ?? -1, execution.step))
    }
    const { rows: elsewhere } = await current.db.query<{ run_id: string; step: number }>(
      `SELECT run_id, step FROM ${current.executionsTable} WHERE pid = ANY($1)`,
      [survivors.map((worker) => worker.pid)]
    )
    const notContinued = busiest![1].filter((running) => {
      const last = stoppedAt.get(running.run_id)!
      return last < chainJobs.length - 1 &&
        !elsewhere.some((execution) => execution.run_id === running.run_id && execution.step === last + 1)
    })
    const report = await current.check(runIds)
    printTable([{
      scenario: "chains: SIGTERM mid-chain",
      report,
      wallMillis,
      extra: `${busiest![1].length} chains on it at the signal, ${late.length} step(s) started after it ` +
        `(${lateByRun.size} after its shutdown began ${shutdownAt - signalledAt} ms after it), ` +
        `exit after ${exitMillis} ms (grace ${graceMillis})`
    }])
    expect(exit.code, current.logs()).toBe(0)
    expect(exitMillis).toBeLessThan(graceMillis + 5_000)
    expect(chainedOn).toEqual([])
    expect(startedLate).toEqual([])
    expect(interrupted).toBe(0)
    expect(leased).toBe(0)
    expect(notContinued).toEqual([])
    expect(report.violations).toEqual([])
    expect(report.finished).toBe(programs)
    expect(report.duplicates).toBe(0)
    expect(report.executions).toBe(total)

    for (const exit of await current.stop(survivors)) expect(exit.code, current.logs()).toBe(0)
  })
})
