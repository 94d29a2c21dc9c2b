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
  /** Lease of the worker running the current step. */
  readonly lockedBy: string | null
  readonly lockedUntil: Date | null
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

/** A wake-up for one step of one program. The database is the only truth: a message only says "look at this". */
export const WakeUp = Schema.Struct({
  runId: Schema.String,
  step: Schema.Int.pipe(Schema.nonNegative())
})
export type WakeUp = typeof WakeUp.Type

const JsonObject = Schema.Record({ key: Schema.String, value: Schema.Unknown }).annotations({
  identifier: "JsonObject",
  message: () => "must be a plain object"
})

const JobName = Schema.String.pipe(
  Schema.nonEmptyString({ message: () => "a job name must be a non-empty string" }),
  Schema.maxLength(200, { message: () => "a job name must be at most 200 characters" })
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
