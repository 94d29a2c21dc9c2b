/**
 * The program: what is stored for each run, what a caller may create, and how programs are queried.
 */
import * as Schema from "effect/Schema"

/** One row of the programs table, as the executor and the API see it. Column names are the seed's. */
export interface ProgramRecord {
  readonly id: number
  readonly runId: string
  readonly jobs: ReadonlyArray<string>
  readonly programData: Record<string, unknown>
  /** Resumable progress, keyed by job name. */
  readonly jobData: Record<string, unknown>
  /** Index of the current job; on error, the job where it happened. */
  readonly step: number
  readonly stepRetryCount: number
  readonly finishedAt: Date | null
  readonly erroredAt: Date | null
  readonly errorMessage: string | null
  readonly createdAt: Date
  readonly updatedAt: Date
  /**
   * Lease of the worker running the current step: its id, until when. Cleared when a run records its outcome, so a
   * `lockedBy` left behind (with `lockedUntil` expired or null) is the mark of a run that was lost.
   */
  readonly lockedBy: string | null
  readonly lockedUntil: Date | null
  /**
   * The fencing token of the step's latest claim, fresh at every claim and kept after the run ends: every write of a
   * run is guarded by it, so a run that was abandoned (timed out, cancelled, lease lost) can never write again.
   */
  readonly leaseToken: string | null
  /**
   * Runs of the current step that ended without recording an outcome (worker killed, process exit, lease lost),
   * counted by the claim that took over. Reset when the step completes or the program is resumed.
   */
  readonly stepLostCount: number
  /** Earliest time the current step may run (delayed retries). */
  readonly nextRunAt: Date
  /**
   * Why the stored row could not be read (malformed JSON written by hand, a step past the last job…), or null.
   * Such a program is listed as it is, and the executor fails it with this message instead of running it.
   */
  readonly corruption: string | null
}

export type ProgramStatus = "in_progress" | "finished" | "errored"

export const status = (program: ProgramRecord): ProgramStatus =>
  program.finishedAt !== null ? "finished" : program.erroredAt !== null ? "errored" : "in_progress"

/** Longest runId a wake-up may name: the width of the `run_id` column on MySQL. */
export const maxRunIdLength = 64
/** Largest step a wake-up may name: the `step` column is a 32-bit integer. */
export const maxStep = 2 ** 31 - 1

/**
 * Whether a decoded wake-up names something the table can hold. Checked at the edge, so a message that no database
 * could ever answer (a runId with NUL, a step out of int4 range) is dropped as poison instead of failing a statement
 * on every delivery.
 */
export const isValidWakeUp = (runId: unknown, step: unknown): boolean =>
  typeof runId === "string" && runId.length > 0 && runId.length <= maxRunIdLength && !runId.includes("\u0000") &&
  typeof step === "number" && Number.isInteger(step) && step >= 0 && step <= maxStep

/** A wake-up for one step of one program. The database is the only truth: a message only says "look at this". */
export const WakeUp = Schema.Struct({
  runId: Schema.String.pipe(
    Schema.minLength(1),
    Schema.maxLength(maxRunIdLength),
    Schema.filter((runId) => !runId.includes("\u0000") || "a runId cannot contain NUL")
  ),
  step: Schema.Int.pipe(Schema.between(0, maxStep))
})
export type WakeUp = typeof WakeUp.Type

/**
 * Text as every dialect can store it: PostgreSQL refuses NUL in `text`, so it is written as the six characters
 * `\u0000`. Applied to every error message and cancel reason before it is written.
 */
export const storableText = (text: string): string => text.includes("\u0000") ? text.replaceAll("\u0000", "\\u0000") : text

const JsonObject = Schema.Record({ key: Schema.String, value: Schema.Unknown }).annotations({
  identifier: "JsonObject",
  message: () => "must be a plain object"
})

/**
 * A job name. One starting with "-" is refused: it is how a mistyped command-line flag (`create a --typo`) would
 * become a job, and no job library can name it on a command line.
 */
export const JobName = Schema.String.pipe(
  Schema.nonEmptyString({ message: () => "a job name must be a non-empty string" }),
  Schema.maxLength(200, { message: () => "a job name must be at most 200 characters" }),
  Schema.filter((name) => !name.startsWith("-") || `a job name cannot start with "-" (got ${JSON.stringify(name)})`)
)

/** What `createProgram` accepts. Decoded from `unknown`, since JavaScript callers and the CLI pass anything. */
export const CreateProgramInput = Schema.Struct({
  jobs: Schema.Array(JobName).pipe(Schema.minItems(1, { message: () => "jobs must list at least one job" })),
  programData: Schema.optionalWith(JsonObject, { exact: true }),
  jobData: Schema.optionalWith(JsonObject, { exact: true })
})
export type CreateProgramInput = typeof CreateProgramInput.Encoded

/** A validated program, ready to be stored. */
export interface NewProgram {
  readonly runId: string
  readonly jobs: ReadonlyArray<string>
  readonly programData: Record<string, unknown>
  readonly jobData: Record<string, unknown>
}

export const ListOrder = Schema.Literal("asc", "desc")

/** The filters of `list`; those of the old library's GraphQL query plus status, paging and a limit. */
export interface ListQuery {
  /** Only programs neither finished nor errored. */
  readonly inProgressOnly?: boolean
  readonly status?: ProgramStatus
  readonly stepRetryCountGte?: number
  readonly orderBy?: "id"
  readonly order?: "asc" | "desc"
  /** Default 100. */
  readonly limit?: number
  readonly offset?: number
}

export const defaultListLimit = 100

/** `createProgram` was given something that is not a program. Nothing was written or published. */
export class InvalidProgramError extends Schema.TaggedError<InvalidProgramError>()("InvalidProgramError", {
  message: Schema.String
}) {}

export class ProgramNotFoundError extends Schema.TaggedError<ProgramNotFoundError>()("ProgramNotFoundError", {
  runId: Schema.String
}) {
  override get message() {
    return `no program with runId ${this.runId}`
  }
}

/** The program is not in a state that allows the operation (cancel a finished program, resume a running one). */
export class ProgramStateError extends Schema.TaggedError<ProgramStateError>()("ProgramStateError", {
  runId: Schema.String,
  message: Schema.String
}) {}
