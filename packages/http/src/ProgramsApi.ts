/**
 * The operations API as an `HttpApi`: list, search, get, create, cancel and resume programs. Its OpenAPI document is
 * derived from these schemas, so what is validated is what is documented.
 */
import * as HttpApi from "@effect/platform/HttpApi"
import * as HttpApiEndpoint from "@effect/platform/HttpApiEndpoint"
import * as HttpApiGroup from "@effect/platform/HttpApiGroup"
import * as HttpApiSchema from "@effect/platform/HttpApiSchema"
import * as OpenApi from "@effect/platform/OpenApi"
import { Program } from "@program-executor/core"
import * as Schema from "effect/Schema"

/** No program has this runId. */
export class ProgramNotFound extends Schema.TaggedError<ProgramNotFound>()(
  "ProgramNotFound",
  { runId: Schema.String, message: Schema.String },
  HttpApiSchema.annotations({ status: 404 })
) {}

/** The program is not in a state that allows the operation (cancel a finished program, resume a running one). */
export class ProgramConflict extends Schema.TaggedError<ProgramConflict>()(
  "ProgramConflict",
  { runId: Schema.String, message: Schema.String },
  HttpApiSchema.annotations({ status: 409 })
) {}

/** The request is well-formed JSON but not a valid program or query. Nothing was written. */
export class InvalidRequest extends Schema.TaggedError<InvalidRequest>()(
  "InvalidRequest",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 400 })
) {}

/** The database (or the broker) did not answer. */
export class StorageUnavailable extends Schema.TaggedError<StorageUnavailable>()(
  "StorageUnavailable",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 503 })
) {}

const JsonObject = Schema.Record({ key: Schema.String, value: Schema.Unknown })

export const ProgramStatus = Schema.Literal("in_progress", "finished", "errored")

/** A program as the API shows it: the stored row, its status and current job, timestamps as ISO 8601 strings. */
export class ProgramView extends Schema.Class<ProgramView>("Program")({
  id: Schema.Number,
  runId: Schema.String,
  status: ProgramStatus,
  jobs: Schema.Array(Schema.String),
  /** The job at `step`: the one running, due, or where the program stopped. */
  currentJob: Schema.NullOr(Schema.String),
  step: Schema.Number,
  stepRetryCount: Schema.Number,
  programData: JsonObject,
  jobData: JsonObject,
  finishedAt: Schema.NullOr(Schema.Date),
  erroredAt: Schema.NullOr(Schema.Date),
  errorMessage: Schema.NullOr(Schema.String),
  createdAt: Schema.Date,
  updatedAt: Schema.Date,
  nextRunAt: Schema.Date,
  lockedBy: Schema.NullOr(Schema.String),
  lockedUntil: Schema.NullOr(Schema.Date),
  corruption: Schema.NullOr(Schema.String)
}) {}

export const ProgramPage = Schema.Struct({
  programs: Schema.Array(ProgramView),
  /** Pass as `after` for the next page; null on the last page. */
  nextAfter: Schema.NullOr(Schema.Number)
})

const Count = Schema.NumberFromString.pipe(Schema.int(), Schema.greaterThanOrEqualTo(0))
const optional = <S extends Schema.Schema.All>(schema: S) => Schema.optionalWith(schema, { exact: true })

/** The filters of `ProgramExecutor.list`, as query parameters. */
export const ListParams = Schema.Struct({
  status: optional(ProgramStatus),
  inProgressOnly: optional(Schema.BooleanFromString),
  /** Programs whose current step was retried at least this many times. */
  retriesGte: optional(Count),
  /** Programs whose current job has this name. */
  job: optional(Schema.String),
  /** Programs whose runId starts with this. */
  runId: optional(Schema.String),
  /** Created at or after this time (ISO 8601). */
  createdAfter: optional(Schema.Date),
  /** Created before this time (ISO 8601). */
  createdBefore: optional(Schema.Date),
  /** Programs whose programData contains this JSON object (`{"shop":1}`). */
  dataContains: optional(Schema.parseJson(JsonObject)),
  order: optional(Schema.Literal("asc", "desc")),
  limit: optional(Count.pipe(Schema.between(1, 1000))),
  /** The `nextAfter` of the previous page: programs past this id in the chosen order. */
  after: optional(Count)
})
export type ListParams = typeof ListParams.Type

export const CreateBody = Schema.Struct({
  jobs: Schema.Array(Schema.String),
  programData: optional(JsonObject),
  jobData: optional(JsonObject),
  /** At most one program per key: a second create with it returns the first program's runId. */
  idempotencyKey: optional(Schema.String),
  /** When the first step is due (ISO 8601). */
  startAt: optional(Schema.String),
  /** The first step is due this long after creation: milliseconds or a duration such as "10 minutes". */
  startAfter: optional(Schema.Union(Schema.Number, Schema.String))
})

export const CancelBody = Schema.Struct({ reason: optional(Schema.String) })

/** Which programs a bulk cancel or resume touches. Every field narrows; `{}` is every program. */
export const BulkFilter = Schema.Struct({
  job: optional(Schema.String),
  runIdPrefix: optional(Schema.String),
  createdAfter: optional(Schema.Date),
  createdBefore: optional(Schema.Date),
  dataContains: optional(JsonObject)
})

export const BulkCancelBody = Schema.Struct({ filter: BulkFilter, reason: optional(Schema.String) })
export const BulkResumeBody = Schema.Struct({ filter: BulkFilter })
export const BulkResult = Schema.Struct({ count: Schema.Number })

const runIdParam = HttpApiSchema.param("runId", Schema.String)

export class ProgramsGroup extends HttpApiGroup.make("programs")
  .add(
    HttpApiEndpoint.get("list", "/api/programs")
      .setUrlParams(ListParams)
      .addSuccess(ProgramPage)
      .addError(InvalidRequest)
      .annotate(OpenApi.Summary, "List programs, newest first, with filters and cursor pagination")
  )
  .add(
    HttpApiEndpoint.get("get")`/api/programs/${runIdParam}`
      .addSuccess(ProgramView)
      .addError(ProgramNotFound)
      .annotate(OpenApi.Summary, "One program")
  )
  .add(
    HttpApiEndpoint.post("create", "/api/programs")
      .setPayload(CreateBody)
      .addSuccess(Schema.Struct({ runId: Schema.String }), { status: 201 })
      .addError(InvalidRequest)
      .annotate(OpenApi.Summary, "Create a program; nothing is written when it is invalid")
  )
  .add(
    HttpApiEndpoint.post("cancel")`/api/programs/${runIdParam}/cancel`
      .setPayload(CancelBody)
      .addSuccess(ProgramView)
      .addError(ProgramNotFound)
      .addError(ProgramConflict)
      .annotate(OpenApi.Summary, "Cancel a program (errored_at set); a running job is interrupted at its next heartbeat")
  )
  .add(
    HttpApiEndpoint.post("resume")`/api/programs/${runIdParam}/resume`
      .addSuccess(ProgramView)
      .addError(ProgramNotFound)
      .addError(ProgramConflict)
      .annotate(OpenApi.Summary, "Run an errored or cancelled program again from the step where it stopped")
  )
  .add(
    HttpApiEndpoint.post("cancelMany", "/api/programs/cancel")
      .setPayload(BulkCancelBody)
      .addSuccess(BulkResult)
      .addError(InvalidRequest)
      .annotate(OpenApi.Summary, "Cancel every program in progress that matches the filter; returns how many")
  )
  .add(
    HttpApiEndpoint.post("resumeMany", "/api/programs/resume")
      .setPayload(BulkResumeBody)
      .addSuccess(BulkResult)
      .addError(InvalidRequest)
      .annotate(OpenApi.Summary, "Resume every errored program that matches the filter; returns how many")
  )
  .addError(StorageUnavailable)
{}

export class ProgramsApi extends HttpApi.make("program-executor")
  .add(ProgramsGroup)
  .annotate(OpenApi.Title, "program-executor")
  .annotate(OpenApi.Description, "Programs of jobs: list, inspect, create, cancel, resume")
{}

/** The row as the API shows it. */
export const view = (program: Program.ProgramRecord): ProgramView =>
  new ProgramView({
    id: program.id,
    runId: program.runId,
    status: Program.status(program),
    jobs: program.jobs,
    currentJob: program.jobs[program.step] ?? null,
    step: program.step,
    stepRetryCount: program.stepRetryCount,
    programData: program.programData,
    jobData: program.jobData,
    finishedAt: program.finishedAt,
    erroredAt: program.erroredAt,
    errorMessage: program.errorMessage,
    createdAt: program.createdAt,
    updatedAt: program.updatedAt,
    nextRunAt: program.nextRunAt,
    lockedBy: program.lockedBy,
    lockedUntil: program.lockedUntil,
    corruption: program.corruption
  })
