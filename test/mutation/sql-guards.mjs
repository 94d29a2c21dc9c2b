#!/usr/bin/env node
/**
 * Hand-made mutants of the SQL statements' guards (`packages/sql/src/internal/programsTable.ts`), which Stryker cannot
 * express (they are SQL text inside tagged templates). Each mutant edits the file, runs the SQLite suites that pin the
 * guards (repository conformance, queue conformance and give-back, executor), and restores the file; a mutant that
 * leaves every test green survives. Results and the justification of each survivor: docs/mutation-scores.md.
 *
 *   corepack pnpm test:mutation:sql
 *
 * Needs no service (SQLite). Takes about 20 minutes (29 runs of the SQLite suites).
 */
import { spawnSync } from "node:child_process"
import { readFileSync, writeFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..")
const file = join(root, "packages/sql/src/internal/programsTable.ts")
const tests = [
  "packages/sql/test/ProgramRepository.sqlite.test.ts",
  "packages/sql/test/ProgramQueue.sqlite.test.ts",
  "packages/sql/test/ProgramQueue.giveBack.test.ts",
  "packages/sql/test/Executor.sqlite.test.ts"
]

/** [name, the original text (found exactly once), its replacement] */
const mutants = [
  ["holds: step check removed", "run_id = ${lease.runId} AND step = ${lease.step} AND lease_token = ${lease.token} AND locked_until > ${now} AND ${rowInProgress}", "run_id = ${lease.runId} AND lease_token = ${lease.token} AND locked_until > ${now} AND ${rowInProgress}"],
  ["holds: fencing token check removed", "run_id = ${lease.runId} AND step = ${lease.step} AND lease_token = ${lease.token} AND locked_until > ${now} AND ${rowInProgress}", "run_id = ${lease.runId} AND step = ${lease.step} AND locked_until > ${now} AND ${rowInProgress}"],
  ["holds: expiry check removed", "run_id = ${lease.runId} AND step = ${lease.step} AND lease_token = ${lease.token} AND locked_until > ${now} AND ${rowInProgress}", "run_id = ${lease.runId} AND step = ${lease.step} AND lease_token = ${lease.token} AND ${rowInProgress}"],
  ["holds: in-progress check removed", "run_id = ${lease.runId} AND step = ${lease.step} AND lease_token = ${lease.token} AND locked_until > ${now} AND ${rowInProgress}", "run_id = ${lease.runId} AND step = ${lease.step} AND lease_token = ${lease.token} AND locked_until > ${now}"],
  ["holds: > now → >= now", "lease_token = ${lease.token} AND locked_until > ${now} AND ${rowInProgress}", "lease_token = ${lease.token} AND locked_until >= ${now} AND ${rowInProgress}"],
  ["leaseFree: <= now → < now", "(locked_until IS NULL OR locked_until <= ${now})", "(locked_until IS NULL OR locked_until < ${now})"],
  ["leaseFree: always free", "sql`(locked_until IS NULL OR locked_until <= ${now})`", "sql`(1 = 1)`"],
  ["due: not-yet-due rows claimable", "sql`${inProgress} AND next_run_at <= ${now} AND ${leaseFree}`", "sql`${inProgress} AND ${leaseFree}`"],
  ["claim: next_run_at check removed", "AND ${rowInProgress} AND next_run_at <= ${now} AND ${leaseFree}${", "AND ${rowInProgress} AND ${leaseFree}${"],
  ["claim: step check removed", "WHERE run_id = ${p.runId} AND step = ${p.step} AND ${rowInProgress}", "WHERE run_id = ${p.runId} AND ${rowInProgress}"],
  ["claim: in-progress check removed", "AND step = ${p.step} AND ${rowInProgress} AND next_run_at", "AND step = ${p.step} AND next_run_at"],
  ["claim: lost run not counted", "CASE WHEN locked_by IS NULL THEN 0 ELSE 1 END", "CASE WHEN locked_by IS NULL THEN 0 ELSE 0 END"],
  ["release: token check removed", "sql`run_id = ${lease.runId} AND step = ${lease.step} AND lease_token = ${lease.token} AND locked_by IS NOT NULL`", "sql`run_id = ${lease.runId} AND step = ${lease.step} AND locked_by IS NOT NULL`"],
  ["release: locked_by check removed", "AND lease_token = ${lease.token} AND locked_by IS NOT NULL`", "AND lease_token = ${lease.token}`"],
  ["releaseAll: token check removed", "sql`(run_id = ${lease.runId} AND step = ${lease.step} AND lease_token = ${lease.token})`", "sql`(run_id = ${lease.runId} AND step = ${lease.step})`"],
  ["cancel: finished programs cancellable", "sql`run_id = ${runId} AND ${rowInProgress}`,\n      runId\n    )\n\n  // A live lease", "sql`run_id = ${runId}`,\n      runId\n    )\n\n  // A live lease"],
  ["resume: finished programs resumable", "sql`run_id = ${runId} AND errored_at IS NOT NULL AND finished_at IS NULL`", "sql`run_id = ${runId} AND errored_at IS NOT NULL`"],
  ["resume: in-progress programs resumable", "sql`run_id = ${runId} AND errored_at IS NOT NULL AND finished_at IS NULL`", "sql`run_id = ${runId} AND finished_at IS NULL`"],
  ["resume: a live lease dropped", "sql`locked_by = CASE WHEN locked_until > ${now} THEN locked_by ELSE NULL END, locked_until = CASE WHEN locked_until > ${now} THEN locked_until ELSE NULL END, errored_at = NULL, error_message = NULL, step_retry_count = 0, step_lost_count = 0, next_run_at = ${now}, updated_at = ${now}`,\n      sql`run_id", "sql`locked_by = NULL, locked_until = NULL, errored_at = NULL, error_message = NULL, step_retry_count = 0, step_lost_count = 0, next_run_at = ${now}, updated_at = ${now}`,\n      sql`run_id"],
  ["recoverExpired: unleased rows too", "sql`${inProgress} AND locked_by IS NOT NULL AND locked_until <= ${now}`", "sql`${inProgress} AND locked_until <= ${now}`"],
  ["recoverExpired: live leases too", "sql`${inProgress} AND locked_by IS NOT NULL AND locked_until <= ${now}`", "sql`${inProgress} AND locked_by IS NOT NULL`"],
  ["recoverExpired: finished rows too", "sql`${inProgress} AND locked_by IS NOT NULL AND locked_until <= ${now}`", "sql`locked_by IS NOT NULL AND locked_until <= ${now}`"],
  ["scheduleRetry: every retry counted", "step_retry_count = step_retry_count + ${\n        countAttempt ? 1 : 0\n      }", "step_retry_count = step_retry_count + ${\n        1\n      }"],
  ["extendLease: cancelled without the step check", "rows[0] !== undefined && rows[0].errored_at !== null && Number(rows[0].step) === lease.step", "rows[0] !== undefined && rows[0].errored_at !== null"],
  ["findStale: queue head ignored", "    const beforeHead = queueHead === undefined\n      ? lit(\"1 = 1\")", "    const beforeHead = true\n      ? lit(\"1 = 1\")"],
  ["advance: retries not reset", "SET ${released}, step = step + 1, step_retry_count = 0, step_lost_count = 0, next_run_at", "SET ${released}, step = step + 1, step_lost_count = 0, next_run_at"],
  ["advance: lost runs not reset", "SET ${released}, step = step + 1, step_retry_count = 0, step_lost_count = 0, next_run_at", "SET ${released}, step = step + 1, step_retry_count = 0, next_run_at"],
  ["continuation: retries not reset", "SET step = step + 1, step_retry_count = 0, step_lost_count = 0, next_run_at = ${now}, locked_by", "SET step = step + 1, step_lost_count = 0, next_run_at = ${now}, locked_by"],
  ["continuation: lost runs not reset", "SET step = step + 1, step_retry_count = 0, step_lost_count = 0, next_run_at = ${now}, locked_by", "SET step = step + 1, step_retry_count = 0, next_run_at = ${now}, locked_by"],
]

const original = readFileSync(file, "utf8")
const restore = () => writeFileSync(file, original)
process.on("SIGINT", () => {
  restore()
  process.exit(130)
})
let survived = 0
try {
  for (const [name, from, to] of mutants) {
    const found = original.split(from).length - 1
    if (found !== 1) {
      console.log(`${name}: not applied (${found} matches): update this script to the current statement`)
      survived++
      continue
    }
    writeFileSync(file, original.replace(from, to))
    const run = spawnSync("npx", ["vitest", "run", "--project", "sql", ...tests], { cwd: root, encoding: "utf8" })
    restore()
    const failed = /Tests\s+(\d+) failed/.exec(run.stdout ?? "")
    const first = (run.stdout ?? "").split("\n").find((line) => line.includes("×"))?.trim()
    if (failed) console.log(`${name}: killed (${failed[1]} failed; ${first})`)
    else {
      survived++
      console.log(`${name}: SURVIVED`)
    }
  }
} finally {
  restore()
}
console.log(`${mutants.length - survived} killed, ${survived} survived of ${mutants.length}`)
