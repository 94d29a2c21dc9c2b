import type { ProgramRecord } from "@program-executor/core"
import { Program } from "@program-executor/core"

/** A plain text table: a header row, a rule, then the rows; columns padded to their widest cell. */
export const table = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string => {
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => (row[column] ?? "").length)))
  const line = (cells: ReadonlyArray<string>) =>
    cells.map((cell, column) => cell.padEnd(widths[column] ?? 0)).join("  ").trimEnd()
  return [line(header), line(widths.map((width) => "-".repeat(width))), ...rows.map(line)].join("\n")
}

export const truncate = (text: string, max: number): string =>
  text.length <= max ? text : `${text.slice(0, Math.max(0, max - 1))}…`

const time = (date: Date | null) => (date === null ? "" : date.toISOString().replace("T", " ").slice(0, 19))

/** Where a program is: "2/3 send_report", or "done" once finished. */
export const position = (program: ProgramRecord): string =>
  program.finishedAt !== null
    ? `${program.jobs.length}/${program.jobs.length}`
    : `${program.step + 1}/${program.jobs.length} ${program.jobs[program.step] ?? "?"}`

export const programTable = (programs: ReadonlyArray<ProgramRecord>): string =>
  table(
    ["ID", "RUN ID", "STATUS", "STEP", "RETRIES", "UPDATED", "ERROR"],
    programs.map((program) => [
      String(program.id),
      program.runId,
      Program.status(program),
      position(program),
      String(program.stepRetryCount),
      time(program.updatedAt),
      truncate((program.errorMessage ?? "").replace(/\s+/g, " "), 60)
    ])
  )

/** The row as JSON, with the seed's column meanings and a derived `status`. */
export const programJson = (program: ProgramRecord) => ({
  id: program.id,
  runId: program.runId,
  status: Program.status(program),
  jobs: program.jobs,
  step: program.step,
  stepRetryCount: program.stepRetryCount,
  programData: program.programData,
  jobData: program.jobData,
  finishedAt: program.finishedAt?.toISOString() ?? null,
  erroredAt: program.erroredAt?.toISOString() ?? null,
  errorMessage: program.errorMessage,
  createdAt: program.createdAt.toISOString(),
  updatedAt: program.updatedAt.toISOString(),
  lockedBy: program.lockedBy,
  lockedUntil: program.lockedUntil?.toISOString() ?? null,
  leaseToken: program.leaseToken,
  stepLostCount: program.stepLostCount,
  nextRunAt: program.nextRunAt.toISOString()
})

export const programDetails = (program: ProgramRecord): string => {
  const rows: Array<[string, string]> = [
    ["id", String(program.id)],
    ["run id", program.runId],
    ["status", Program.status(program)],
    ["jobs", program.jobs.map((job, index) => (index === program.step ? `[${job}]` : job)).join(" → ")],
    ["step", position(program)],
    ["retries", String(program.stepRetryCount)],
    ["lost runs", String(program.stepLostCount)],
    ["program data", JSON.stringify(program.programData)],
    ["job data", JSON.stringify(program.jobData)],
    ["created at", time(program.createdAt)],
    ["updated at", time(program.updatedAt)],
    ["finished at", time(program.finishedAt)],
    ["errored at", time(program.erroredAt)],
    ["error", program.errorMessage ?? ""],
    ["locked by", program.lockedBy === null ? "" : `${program.lockedBy} until ${time(program.lockedUntil)}`],
    ["next run at", time(program.nextRunAt)]
  ]
  const width = Math.max(...rows.map(([key]) => key.length))
  return rows.map(([key, value]) => `${key.padEnd(width)}  ${value}`).join("\n")
}
