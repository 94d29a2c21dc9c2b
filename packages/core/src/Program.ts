/**
 * The program: what is stored for each run, what a caller may create, and how programs are queried.
 */
import * as Duration from "effect/Duration"
import * as Option from "effect/Option"
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
  /** The key given at creation (`createProgram({ idempotencyKey })`), or null. At most one program per key. */
  readonly idempotencyKey: string | null
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

/** Longest idempotency key: fits MySQL's indexed `VARCHAR(255)` in any character set. */
export const maxIdempotencyKeyLength = 200

export const IdempotencyKey = Schema.String.pipe(
  Schema.nonEmptyString({ message: () => "an idempotency key must be a non-empty string" }),
  Schema.maxLength(maxIdempotencyKeyLength, {
    message: () => `an idempotency key must be at most ${maxIdempotencyKeyLength} characters`
  }),
  Schema.filter((key) => !key.includes("\u0000") || "an idempotency key cannot contain NUL")
)

/** An absolute start: a valid `Date`, or an ISO 8601 string. */
export const StartAt = Schema.Union(Schema.ValidDateFromSelf, Schema.Date).annotations({
  message: () => "startAt must be a valid Date or an ISO 8601 date string"
})

/** A finite, non-negative duration: milliseconds, `"10 minutes"`, or a `Duration`. */
export const StartAfter = Schema.declare(
  (input: unknown): input is Duration.DurationInput =>
    (typeof input === "number" || typeof input === "string" || Duration.isDuration(input)) &&
    Option.match(Duration.decodeUnknown(input), {
      onNone: () => false,
      onSome: (duration) => Duration.isFinite(duration) && (typeof input !== "number" || input >= 0)
    }),
  { message: () => "startAfter must be a finite duration: milliseconds, a string such as \"10 minutes\", or a Duration" }
)

/** What `createProgram` accepts. Decoded from `unknown`, since JavaScript callers and the CLI pass anything. */
export const CreateProgramInput = Schema.Struct({
  jobs: Schema.Array(JobName).pipe(Schema.minItems(1, { message: () => "jobs must list at least one job" })),
  programData: Schema.optionalWith(JsonObject, { exact: true }),
  jobData: Schema.optionalWith(JsonObject, { exact: true }),
  idempotencyKey: Schema.optionalWith(IdempotencyKey, { exact: true }),
  startAt: Schema.optionalWith(StartAt, { exact: true }),
  startAfter: Schema.optionalWith(StartAfter, { exact: true })
})
export type CreateProgramInput = typeof CreateProgramInput.Encoded

/** A validated program, ready to be stored. */
export interface NewProgram {
  readonly runId: string
  readonly jobs: ReadonlyArray<string>
  readonly programData: Record<string, unknown>
  readonly jobData: Record<string, unknown>
  /** At most one program per key: storing a second one returns the first instead. */
  readonly idempotencyKey?: string
  /** When the first step is due (`next_run_at`); absent: now. */
  readonly startAt?: Date
  /** The first step is due this long after the insert, by the database clock. */
  readonly startAfter?: Duration.Duration
}

export const ListOrder = Schema.Literal("asc", "desc")

/**
 * Which programs a bulk operation (`cancelMany`, `resumeMany`) or `list` looks at. Every field narrows; none: all.
 */
export interface ProgramFilter {
  /** Only programs neither finished nor errored. */
  readonly inProgressOnly?: boolean
  readonly status?: ProgramStatus
  readonly stepRetryCountGte?: number
  /** The current job's name (`jobs[step]`). */
  readonly job?: string
  /** Created at or after this time. */
  readonly createdAfter?: Date
  /** Created before this time. */
  readonly createdBefore?: Date
  /** The runId starts with this text. */
  readonly runIdPrefix?: string
  /** `programData` contains this object: every key with an equal value (nested objects contained the same way). */
  readonly dataContains?: Record<string, unknown>
}

/** The filters of `list`; those of the old library's GraphQL query plus status, search, paging and a limit. */
export interface ListQuery extends ProgramFilter {
  readonly orderBy?: "id"
  readonly order?: "asc" | "desc"
  /** Default 100. */
  readonly limit?: number
  readonly offset?: number
  /**
   * Cursor: only programs after this id in the order (`id > after` ascending, `id < after` descending). Pass the last
   * id of a page for the next one; unlike `offset`, it costs the same on every page.
   */
  readonly after?: number
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

/** What `prune` deletes: finished programs finished before a time, errored ones errored before another. */
export interface PruneOptions {
  /** Delete programs finished before this time. Absent: none. */
  readonly finishedBefore?: Date
  /** Delete programs errored (failed or cancelled) before this time. Absent: none. */
  readonly erroredBefore?: Date
  /** Count what would be deleted, delete nothing. */
  readonly dryRun?: boolean
  /** Rows per DELETE statement. Default 1000. */
  readonly batchSize?: number
}

export interface PruneResult {
  readonly finished: number
  readonly errored: number
  readonly dryRun: boolean
}

export const defaultBatchSize = 1000

/** A scalar a `dataContains` pattern compares, and where: the keys from the top of `programData`. */
export interface DataLeaf {
  readonly path: ReadonlyArray<string>
  readonly value: string | number | boolean | null
}

/**
 * The leaves of a `dataContains` pattern: a program matches when every leaf's path holds an equal scalar. Nested
 * objects are matched key by key, as PostgreSQL's `@>` and MySQL's `JSON_CONTAINS` do; arrays are refused (those two
 * read them as "contains", a per-key `json_extract` cannot), so the filter means the same on every dialect.
 * Returns a problem's description instead when the pattern is not such an object.
 */
export const dataLeaves = (pattern: unknown): ReadonlyArray<DataLeaf> | string => {
  const leaves: Array<DataLeaf> = []
  const walk = (value: unknown, path: ReadonlyArray<string>): string | undefined => {
    if (value === null || typeof value === "string" || typeof value === "boolean") {
      leaves.push({ path, value })
      return undefined
    }
    if (typeof value === "number") {
      if (!Number.isFinite(value)) return `dataContains.${path.join(".")}: a number must be finite`
      leaves.push({ path, value })
      return undefined
    }
    if (typeof value === "object" && !Array.isArray(value) && Object.getPrototypeOf(value) === Object.prototype) {
      for (const [key, inner] of Object.entries(value)) {
        const problem = walk(inner, [...path, key])
        if (problem !== undefined) return problem
      }
      return undefined
    }
    const where = path.length === 0 ? "dataContains" : `dataContains.${path.join(".")}`
    return Array.isArray(value)
      ? `${where}: arrays cannot be matched (give the keys of objects, and scalars)`
      : `${where}: must be a plain object, a string, a number, a boolean or null`
  }
  if (typeof pattern !== "object" || pattern === null || Array.isArray(pattern)) {
    return "dataContains must be a plain object"
  }
  const problem = walk(pattern, [])
  return problem ?? leaves
}

/** Whether `row` passes every field of `filter` (the memory repository's reading of what SQL does). */
export const matchesFilter = (row: ProgramRecord, filter: ProgramFilter): boolean => {
  const rowStatus = status(row)
  if (filter.inProgressOnly === true && rowStatus !== "in_progress") return false
  if (filter.status !== undefined && rowStatus !== filter.status) return false
  if (row.stepRetryCount < (filter.stepRetryCountGte ?? 0)) return false
  if (filter.job !== undefined && row.jobs[row.step] !== filter.job) return false
  if (filter.createdAfter !== undefined && row.createdAt < filter.createdAfter) return false
  if (filter.createdBefore !== undefined && row.createdAt >= filter.createdBefore) return false
  if (filter.runIdPrefix !== undefined && !row.runId.startsWith(filter.runIdPrefix)) return false
  if (filter.dataContains !== undefined) {
    const leaves = dataLeaves(filter.dataContains)
    if (typeof leaves === "string") return false
    for (const leaf of leaves) {
      let value: unknown = row.programData
      for (const key of leaf.path) {
        value = typeof value === "object" && value !== null && !Array.isArray(value) && Object.hasOwn(value, key)
          ? (value as Record<string, unknown>)[key]
          : undefined
      }
      if (value !== leaf.value) return false
    }
  }
  return true
}

/** Why `filter` cannot be run, or undefined: checked before any statement, so bad input is a typed error. */
export const filterProblem = (filter: ProgramFilter): string | undefined => {
  if (filter.status !== undefined && !["in_progress", "finished", "errored"].includes(filter.status)) {
    return "status must be in_progress, finished or errored"
  }
  const count = filter.stepRetryCountGte
  if (count !== undefined && (!Number.isInteger(count) || count < 0)) return "stepRetryCountGte must be an integer >= 0"
  if (filter.job !== undefined && (typeof filter.job !== "string" || filter.job === "")) {
    return "job must be a non-empty string"
  }
  for (const name of ["createdAfter", "createdBefore"] as const) {
    const date = filter[name]
    if (date !== undefined && !(date instanceof Date && !Number.isNaN(date.getTime()))) {
      return `${name} must be a valid Date`
    }
  }
  if (filter.runIdPrefix !== undefined) {
    if (typeof filter.runIdPrefix !== "string" || filter.runIdPrefix === "") return "runIdPrefix must be a non-empty string"
    if (filter.runIdPrefix.length > maxRunIdLength || filter.runIdPrefix.includes("\u0000")) {
      return `runIdPrefix must be at most ${maxRunIdLength} characters, without NUL`
    }
  }
  if (filter.dataContains !== undefined) {
    const leaves = dataLeaves(filter.dataContains)
    if (typeof leaves === "string") return leaves
  }
  return undefined
}
