/**
 * The invariants every fault scenario ends with, read from the programs table and the executions the jobs recorded:
 * - every program finished, or errored exactly where the scenario expects (step and message);
 * - no step advanced twice: each program ran steps 0..n-1 (or up to its error) in order, each step after the previous
 *   one had completed, and the row's final step is its last;
 * - each step ran once, counted by the runs recorded (not by the attempt numbers the system reports), except where a
 *   worker died holding it: a run by a worker that died after it started (mid-job, or after the job and before the
 *   step advanced) may be followed by one more that started after the death — never one running beside it; a run
 *   with an attempt number above 1 needs a death before it (nothing fails in these scenarios);
 * - nothing ran after its program finished;
 * - no program is left unfinished or leased.
 * `check` returns the violations (empty when all hold) and the figures for `printTable`.
 */
import type pg from "pg"

export interface ExpectedError {
  /** The error message must contain this. */
  readonly message: string | RegExp
  /** The step where it errored; any step when omitted. */
  readonly step?: number
  /** Steps that ran before it (each once): all those before the error step unless given (a step set by hand). */
  readonly stepsRun?: number
}

export interface Death {
  readonly pid: number
  /** When it died (kill -9) or was told to stop (ms since the epoch). */
  readonly at: number
}

export interface CheckOptions {
  readonly db: pg.Pool
  readonly table: string
  readonly executionsTable: string
  /** The programs of the scenario (others in the table are ignored). */
  readonly runIds: ReadonlyArray<string>
  readonly expectErrors?: ReadonlyMap<string, ExpectedError>
  /** Workers killed mid-run: each job they had started may have run once more elsewhere. */
  readonly deaths?: ReadonlyArray<Death>
}

export interface Report {
  readonly programs: number
  readonly finished: number
  readonly errored: number
  /** Steps completed (advanced), over all programs. */
  readonly steps: number
  readonly executions: number
  /** Executions beyond one per (program, step). */
  readonly duplicates: number
  /** Of those, the ones a dead worker explains. */
  readonly duplicatesAfterDeath: number
  /** Programs unfinished (not errored) or still leased. */
  readonly stuck: number
  /** Longest time from a death until the last re-run of a step the dead worker had started, in ms. */
  readonly recoveryMillis: number
  readonly violations: ReadonlyArray<string>
}

interface ProgramRow {
  readonly run_id: string
  readonly jobs: unknown
  readonly step: number
  readonly step_retry_count: number
  readonly finished_at: Date | null
  readonly errored_at: Date | null
  readonly error_message: string | null
  readonly locked_by: string | null
  readonly locked_until: Date | null
}

interface Execution {
  readonly run_id: string
  readonly step: number
  readonly attempt: number
  readonly pid: number
  readonly started_at: Date
  readonly finished_at: Date | null
}

const matches = (text: string | null, expected: string | RegExp) =>
  text !== null && (typeof expected === "string" ? text.includes(expected) : expected.test(text))

export const check = async (options: CheckOptions): Promise<Report> => {
  const { db, executionsTable, table } = options
  const expectErrors = options.expectErrors ?? new Map<string, ExpectedError>()
  const deaths = options.deaths ?? []
  const dead = new Set(deaths.map((death) => death.pid))
  const rows = (await db.query<ProgramRow>(
    `SELECT run_id, jobs, step, step_retry_count, finished_at, errored_at, error_message, locked_by, locked_until
     FROM ${table} WHERE run_id = ANY($1)`,
    [options.runIds]
  )).rows
  const executions = (await db.query<Execution>(
    `SELECT run_id, step, attempt, pid, started_at, finished_at FROM ${executionsTable} WHERE run_id = ANY($1) ORDER BY id`,
    [options.runIds]
  )).rows
  const byRun = new Map<string, Array<Execution>>()
  for (const execution of executions) {
    const own = byRun.get(execution.run_id)
    if (own === undefined) byRun.set(execution.run_id, [execution])
    else own.push(execution)
  }

  const violations: Array<string> = []
  const violate = (runId: string, what: string) => {
    // Enough to diagnose, not a flood.
    if (violations.length < 50) violations.push(`${runId}: ${what}`)
  }
  let finished = 0
  let errored = 0
  let steps = 0
  let duplicates = 0
  let duplicatesAfterDeath = 0
  let stuck = 0
  if (rows.length !== options.runIds.length) {
    violations.push(`${options.runIds.length - rows.length} program(s) missing from ${table}`)
  }

  for (const row of rows) {
    const runId = row.run_id
    const jobCount = Array.isArray(row.jobs) ? row.jobs.length : 0
    const own = byRun.get(runId) ?? []
    const expected = expectErrors.get(runId)
    if (row.locked_by !== null || row.locked_until !== null) {
      violate(runId, `still leased by ${row.locked_by} until ${row.locked_until?.toISOString()}`)
    }
    // Steps that must have run: all of them, or those before the error.
    let ranUpTo: number
    if (row.finished_at === null && row.errored_at === null) {
      stuck++
      violate(runId, `stuck at step ${row.step} (retries ${row.step_retry_count}, last error ${row.error_message})`)
      ranUpTo = row.step
    } else if (row.finished_at !== null) {
      if (row.locked_by !== null || row.locked_until !== null) stuck++
      finished++
      steps += jobCount
      ranUpTo = jobCount
      if (expected !== undefined) violate(runId, `finished, but was expected to error (${String(expected.message)})`)
      if (row.step !== jobCount - 1) violate(runId, `finished at step ${row.step} of ${jobCount} jobs`)
      if (row.errored_at !== null) violate(runId, "both finished and errored")
    } else {
      if (row.locked_by !== null || row.locked_until !== null) stuck++
      errored++
      ranUpTo = expected?.stepsRun ?? row.step
      steps += ranUpTo
      if (expected === undefined) violate(runId, `errored at step ${row.step}: ${row.error_message}`)
      else {
        if (!matches(row.error_message, expected.message)) {
          violate(runId, `error message ${JSON.stringify(row.error_message)} lacks ${String(expected.message)}`)
        }
        if (expected.step !== undefined && row.step !== expected.step) {
          violate(runId, `errored at step ${row.step}, expected step ${expected.step}`)
        }
      }
      // A corrupted program fails before its job runs; any other failure happens in the job itself.
      if (own.some((execution) => execution.step === row.step)) ranUpTo = row.step + 1
    }

    const bySteps = new Map<number, Array<Execution>>()
    for (const execution of own) {
      const list = bySteps.get(execution.step)
      if (list === undefined) bySteps.set(execution.step, [execution])
      else list.push(execution)
    }
    for (const step of bySteps.keys()) {
      if (step >= ranUpTo && !(row.finished_at === null && row.errored_at === null && step === row.step)) {
        violate(runId, `step ${step} ran, but the program ${row.finished_at !== null ? "finished" : "stopped"} at ${row.step}`)
      }
    }
    for (let step = 0; step < ranUpTo; step++) {
      const list = bySteps.get(step) ?? []
      if (list.length === 0) {
        violate(runId, `step ${step} never ran (a skipped step: advanced twice?)`)
        continue
      }
      // Runs in the order they started: each after the first needs an excuse — an earlier run by a worker that died
      // after that run started and before this one did (each such run excuses one).
      const runs = [...list].sort((a, b) => a.started_at.getTime() - b.started_at.getTime())
      const excuses = runs.flatMap((execution) => {
        const death = deaths.find((candidate) =>
          candidate.pid === execution.pid && candidate.at >= execution.started_at.getTime()
        )
        return death === undefined ? [] : [{ execution, death, used: false }]
      })
      for (let index = 1; index < runs.length; index++) {
        const run = runs[index]!
        duplicates++
        const excuse = excuses.find((candidate) =>
          !candidate.used && candidate.execution !== run &&
          candidate.execution.started_at.getTime() <= run.started_at.getTime() &&
          run.started_at.getTime() >= candidate.death.at
        )
        if (excuse !== undefined) {
          excuse.used = true
          duplicatesAfterDeath++
          continue
        }
        violate(
          runId,
          `step ${step} ran ${runs.length} times (pids ${runs.map((execution) => execution.pid).join(", ")}, attempts ` +
            `${runs.map((execution) => execution.attempt).join(", ")}): run ${index + 1} is explained by no death before it`
        )
      }
      for (const run of runs) {
        if (run.attempt > 1 && !deaths.some((death) => death.at <= run.started_at.getTime())) {
          violate(runId, `step ${step} ran as attempt ${run.attempt} though nothing failed and no worker had died`)
        }
        if (row.finished_at !== null && run.started_at > row.finished_at) {
          violate(runId, `step ${step} ran again (pid ${run.pid}) after the program finished`)
        }
      }
      if (step > 0) {
        // Each step starts after every run of the previous step started, and after every completed one ended.
        const previous = bySteps.get(step - 1) ?? []
        const lastStart = Math.max(...previous.map((execution) => execution.started_at.getTime()))
        const lastEnd = Math.max(0, ...previous.flatMap((execution) => execution.finished_at === null ? [] : [execution.finished_at.getTime()]))
        const firstStart = Math.min(...list.map((execution) => execution.started_at.getTime()))
        if (firstStart < lastStart || firstStart < lastEnd) {
          violate(runId, `step ${step} started before step ${step - 1} had completed (advanced twice?)`)
        }
      }
      // A run that never finished is only possible for a worker that died.
      for (const execution of list) {
        if (execution.finished_at === null && !dead.has(execution.pid)) {
          violate(runId, `step ${step} run by ${execution.pid} never finished, and that worker did not die`)
        }
      }
    }
  }

  // Recovery: from a death until the last re-run, elsewhere, of a step the dead worker had started.
  let recoveryMillis = 0
  for (const death of deaths) {
    const started = executions.filter((execution) => execution.pid === death.pid)
    for (const execution of started) {
      const reruns = (byRun.get(execution.run_id) ?? []).filter((other) =>
        other.step === execution.step && other.pid !== death.pid && other.started_at > execution.started_at
      )
      for (const rerun of reruns) recoveryMillis = Math.max(recoveryMillis, rerun.started_at.getTime() - death.at)
    }
  }

  return {
    programs: rows.length,
    finished,
    errored,
    steps,
    executions: executions.length,
    duplicates,
    duplicatesAfterDeath,
    stuck,
    recoveryMillis,
    violations
  }
}

export interface TableRow {
  readonly scenario: string
  readonly report: Report
  readonly wallMillis: number
  readonly extra?: string
}

/** One line per scenario, the same columns every run, so figures compare from run to run. */
export const printTable = (rows: ReadonlyArray<TableRow>) => {
  const header = ["scenario", "programs", "finished", "errored", "steps", "runs", "dup", "dup(dead)", "stuck", "recovery", "wall", "steps/s", "violations", "notes"]
  const lines = rows.map((row) => [
    row.scenario,
    String(row.report.programs),
    String(row.report.finished),
    String(row.report.errored),
    String(row.report.steps),
    String(row.report.executions),
    String(row.report.duplicates),
    String(row.report.duplicatesAfterDeath),
    String(row.report.stuck),
    `${(row.report.recoveryMillis / 1000).toFixed(1)} s`,
    `${(row.wallMillis / 1000).toFixed(1)} s`,
    (row.report.steps / (row.wallMillis / 1000)).toFixed(0),
    String(row.report.violations.length),
    row.extra ?? ""
  ])
  const widths = header.map((title, index) => Math.max(title.length, ...lines.map((line) => line[index]!.length)))
  const format = (cells: ReadonlyArray<string>) => cells.map((cell, index) => cell.padEnd(widths[index]!)).join("  ").trimEnd()
  console.log(["", format(header), format(widths.map((width) => "-".repeat(width))), ...lines.map(format), ""].join("\n"))
}
