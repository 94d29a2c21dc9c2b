/**
 * Every SQL statement on the programs table, per dialect. Shared by the repository and the queue, which see the same
 * table: the queue's messages are its due, unleased rows.
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import type * as Statement from "@effect/sql/Statement"
import { type Lease, Program, type ProgramRecord, RepositoryError, type WakeUp } from "@program-executor/core"
import { createHash, randomUUID } from "node:crypto"
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import { inTransaction } from "./afterCommit.js"
import { type PreparedStatementsService, viaClient } from "./preparedStatements.js"
import { describeSqlError, isTransientSqlError } from "./sqlErrors.js"

/** The table name is not a safe SQL identifier. Raised before any SQL is sent. */
export class InvalidTableNameError extends Schema.TaggedError<InvalidTableNameError>()("InvalidTableNameError", {
  tableName: Schema.String,
  message: Schema.String
}) {}

export const defaultTableName = "programs"

const identifier = /^[A-Za-z_][A-Za-z0-9_]*$/

export const validateTableName = (tableName: string = defaultTableName) =>
  typeof tableName === "string" && identifier.test(tableName) && tableName.length <= 63
    ? Effect.succeed(tableName)
    : Effect.fail(
      new InvalidTableNameError({
        tableName: String(tableName),
        message: `invalid table name ${
          JSON.stringify(String(tableName)).slice(0, 80)
        }: it must match ^[A-Za-z_][A-Za-z0-9_]*$ and be at most 63 characters`
      })
    )

export type Dialect = "pg" | "mysql" | "sqlite"

/**
 * `SqlError` becomes the repository's error at this boundary; the message says which operation failed and gives the
 * database's own words. A data-class error (the database refused the values) is marked not transient, so the
 * executor does not retry a statement that would fail the same way forever.
 */
export const toRepositoryError = (what: string) => (error: SqlError) =>
  isTransientSqlError(error)
    ? new RepositoryError({ message: `${what} failed: ${error.message}${causeMessage(error.cause)}`, cause: error })
    : new RepositoryError({ message: `${what} failed: ${describeSqlError(error)}`, cause: error, transient: false })

/** InnoDB picks a victim when writers deadlock (gap locks of a claim against an insert): that statement is retried. */
const isTransientLock = (error: SqlError) => {
  const errno = (error.cause as { errno?: unknown } | undefined)?.errno
  return errno === 1213 || errno === 1205
}

/** ER_DUP_KEYNAME: the index exists already (another worker created it first). */
const isDuplicateKeyName = (error: SqlError) => (error.cause as { errno?: unknown } | undefined)?.errno === 1061

/** What MySQL's `raw` result says an UPDATE changed. */
const affectedRows = (result: unknown) => (result as { affectedRows?: number }).affectedRows ?? 0

const causeMessage = (cause: unknown) =>
  cause instanceof Error && cause.message !== "" ? ` (${cause.message})` : ""

/** An index name within PostgreSQL's and MySQL's 63/64-character limits, unique per table. */
const indexName = (table: string, suffix: string) => {
  const name = `${table}_${suffix}`
  if (name.length <= 63) return name
  const hash = createHash("sha1").update(table).digest("hex").slice(0, 8)
  return `${table.slice(0, 63 - suffix.length - hash.length - 2)}_${hash}_${suffix}`
}

// ---------------------------------------------------------------------------------------------------------------------
// Decoding rows

interface Row {
  readonly id: number | string | bigint
  readonly run_id: string
  readonly program_data: unknown
  readonly jobs: unknown
  readonly job_data: unknown
  readonly step: number | string
  readonly step_retry_count: number | string
  readonly finished_at: unknown
  readonly errored_at: unknown
  readonly error_message: string | null
  readonly created_at: unknown
  readonly updated_at: unknown
  readonly locked_by: string | null
  readonly locked_until: unknown
  readonly lease_token: string | null
  readonly step_lost_count: number | string
  readonly next_run_at: unknown
  readonly idempotency_key?: string | null
}

const sqliteTimestamp = /^\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d(\.\d+)?)?$/

const toDate = (value: unknown): Date | null => {
  if (value === null || value === undefined) return null
  if (value instanceof Date) return value
  if (typeof value === "number") return new Date(value)
  if (typeof value === "string") {
    // SQLite stores UTC as "YYYY-MM-DD HH:MM:SS.SSS" (ours, and CURRENT_TIMESTAMP written by hand).
    return new Date(sqliteTimestamp.test(value) ? `${value.replace(" ", "T")}Z` : value)
  }
  return new Date(NaN)
}

const isPlainObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value)

/**
 * How JSON columns arrive: parsed (jsonb), as text (SQLite), or either (mysql2 parses JSON columns where the server
 * marks them as JSON, so a string may be a parsed JSON string: the column's check makes stored text valid JSON).
 */
export type JsonColumns = "parsed" | "text" | "either"

const readJson = (column: string, value: unknown, mode: JsonColumns, problems: Array<string>): unknown => {
  if (mode === "parsed" || typeof value !== "string") return value
  try {
    return JSON.parse(value)
  } catch (error) {
    if (mode === "either") return value
    problems.push(`${column} is not valid JSON (${error instanceof Error ? error.message : String(error)})`)
    return undefined
  }
}

/**
 * A row as the executor sees it. Never fails: what cannot be read (JSON written by hand, a wrong shape) is described
 * in `corruption`, so the executor fails that program alone with a clear message.
 */
export const decodeRowWith = (row: Row, parsed: JsonColumns): ProgramRecord => {
  const problems: Array<string> = []
  const jobsValue = readJson("jobs", row.jobs, parsed, problems)
  let jobs: ReadonlyArray<string> = []
  if (Array.isArray(jobsValue) && jobsValue.every((job) => typeof job === "string")) jobs = jobsValue
  else if (jobsValue !== undefined) problems.push("jobs is not a JSON array of job names")
  const programValue = readJson("program_data", row.program_data, parsed, problems)
  let programData: Record<string, unknown> = {}
  if (isPlainObject(programValue)) programData = programValue
  else if (programValue !== undefined && programValue !== null) problems.push("program_data is not a JSON object")
  const jobDataValue = readJson("job_data", row.job_data, parsed, problems)
  let jobData: Record<string, unknown> = {}
  if (isPlainObject(jobDataValue)) jobData = jobDataValue
  else if (jobDataValue !== undefined && jobDataValue !== null) problems.push("job_data is not a JSON object")
  const required = (column: string, value: unknown) => {
    const date = toDate(value)
    if (date === null || Number.isNaN(date.getTime())) {
      problems.push(`${column} is not a timestamp`)
      return new Date(0)
    }
    return date
  }
  const optional = (column: string, value: unknown) => {
    const date = toDate(value)
    if (date !== null && Number.isNaN(date.getTime())) problems.push(`${column} is not a timestamp`)
    return date
  }
  return {
    id: Number(row.id),
    runId: row.run_id,
    jobs,
    programData,
    jobData,
    step: Number(row.step),
    stepRetryCount: Number(row.step_retry_count),
    finishedAt: optional("finished_at", row.finished_at),
    erroredAt: optional("errored_at", row.errored_at),
    errorMessage: row.error_message,
    createdAt: required("created_at", row.created_at),
    updatedAt: required("updated_at", row.updated_at),
    lockedBy: row.locked_by,
    lockedUntil: optional("locked_until", row.locked_until),
    leaseToken: row.lease_token,
    stepLostCount: Number(row.step_lost_count),
    nextRunAt: required("next_run_at", row.next_run_at),
    corruption: problems.length === 0 ? null : `the stored program cannot be read: ${problems.join("; ")}`,
    idempotencyKey: row.idempotency_key ?? null
  }
}

// ---------------------------------------------------------------------------------------------------------------------

/** Stands for a parameter of a statement compiled once: `bind` puts each call's value in its place. */
class Slot<Name extends string> {
  constructor(readonly name: Name) {}
}

/** A statement compiled once: the text that runs, and its parameters for one call, in placeholder order. */
export interface Compiled<Name extends string> {
  readonly text: string
  readonly bind: (values: Readonly<Record<Name, unknown>>) => Array<unknown>
}

/**
 * Compiles a statement written with the client's own fragments (`holds`, `leaseFree`, `plus`, …) once, its
 * parameters left as named slots. The hot statements are defined this way: one definition, which runs prepared
 * (PostgreSQL, SQLite) or through the client (MySQL, a transaction, a client built elsewhere) as the same text.
 */
export const compileOnce = <Name extends string>(
  names: ReadonlyArray<Name>,
  build: (slots: { readonly [K in Name]: Slot<K> }) => Statement.Statement<unknown>
): Compiled<Name> => {
  const slots = Object.fromEntries(names.map((name) => [name, new Slot(name)])) as { readonly [K in Name]: Slot<K> }
  const [text, binds] = build(slots).compile(true)
  const order = binds.map((bind) => {
    if (bind instanceof Slot) return bind.name as Name
    throw new Error(`a statement compiled once binds only its slots, not ${String(bind)}: ${text}`)
  })
  return { text, bind: (values) => order.map((name) => values[name]) }
}

export type ProgramsTable = ReturnType<typeof makeStatements>

export const dialectOf = (sql: SqlClient.SqlClient): Effect.Effect<Dialect, RepositoryError> =>
  sql.onDialectOrElse({
    pg: () => Effect.succeed("pg" as const),
    mysql: () => Effect.succeed("mysql" as const),
    sqlite: () => Effect.succeed("sqlite" as const),
    orElse: () =>
      Effect.fail(new RepositoryError({ message: "unsupported SQL dialect: use PostgreSQL, MySQL/MariaDB or SQLite" }))
  })

/**
 * The statements of one table. Builds nothing per call but the statement itself: no table checks, no re-reads. The
 * hot ones (claim, advance) are fixed texts run through `prepared`.
 */
export const makeStatements = (
  client: SqlClient.SqlClient,
  dialect: Dialect,
  tableName: string,
  prepared: PreparedStatementsService = viaClient(client)
) => {
  const sql = client
  const table = sql(tableName)
  const lit = sql.literal
  const jsonColumns: JsonColumns = dialect === "pg" ? "parsed" : dialect === "mysql" ? "either" : "text"
  const decodeRow = (row: Row) => decodeRowWith(row, jsonColumns)
  const columns = lit(
    "id, run_id, program_data, jobs, job_data, step, step_retry_count, finished_at, errored_at, error_message, " +
      "created_at, updated_at, locked_by, locked_until, lease_token, step_lost_count, next_run_at, idempotency_key"
  )

  // The database clock, always. PostgreSQL's now() is the statement's transaction time.
  const now = dialect === "pg"
    ? lit("now()")
    : dialect === "mysql"
    ? lit("UTC_TIMESTAMP(3)")
    : lit("strftime('%Y-%m-%d %H:%M:%f', 'now')")
  /** A duration as `plus` binds it: seconds (PostgreSQL), microseconds (MySQL), a modifier (SQLite). */
  const interval = (duration: Duration.Duration): number | string => {
    const millis = Math.max(0, Math.round(Duration.toMillis(duration)))
    return dialect === "pg" ? millis / 1000 : dialect === "mysql" ? millis * 1000 : `+${millis / 1000} seconds`
  }
  /** The database clock plus a bound `interval`. */
  const plus = (bound: unknown): Statement.Fragment =>
    dialect === "pg"
      ? sql`(now() + make_interval(secs => ${bound}::double precision))`
      : dialect === "mysql"
      ? sql`DATE_ADD(UTC_TIMESTAMP(3), INTERVAL ${bound} MICROSECOND)`
      : sql`strftime('%Y-%m-%d %H:%M:%f', 'now', ${bound})`
  const after = (duration: Duration.Duration) => plus(interval(duration))
  /** A timestamp read from the database, bound back in the column's own format. */
  const timestampParam = (date: Date): Statement.Fragment =>
    dialect === "pg"
      ? sql`${date.toISOString()}::timestamptz`
      : sql`${date.toISOString().replace("T", " ").replace("Z", "")}`
  /** Neither finished nor errored, written as the partial indexes' predicate, so the queue's scans can use them. */
  const inProgress = lit("finished_at IS NULL AND errored_at IS NULL")
  /**
   * The same condition for a statement that names its row by `run_id`, written so that the planner cannot match it
   * to a partial index: such a statement must take the `run_id` index whatever the statistics say. (On a PostgreSQL
   * table not yet analyzed, the advance took a partial index and read every unfinished row, for every step.)
   */
  const rowInProgress = lit("COALESCE(finished_at, errored_at) IS NULL")
  const leaseFree = sql`(locked_until IS NULL OR locked_until <= ${now})`
  const due = sql`${inProgress} AND next_run_at <= ${now} AND ${leaseFree}`
  /** The lease is still this run's: its step, its fencing token, not expired, the program in progress. */
  const holds = (lease: { readonly runId: unknown; readonly step: unknown; readonly token: unknown }) =>
    sql`run_id = ${lease.runId} AND step = ${lease.step} AND lease_token = ${lease.token} AND locked_until > ${now} AND ${rowInProgress}`
  const released = lit("locked_by = NULL, locked_until = NULL")
  /**
   * A new lease with a fresh fencing token. A `locked_by` still set is a run that never recorded an outcome (its lease
   * expired): counted before `locked_by` is overwritten (MySQL applies SET assignments left to right).
   */
  const lostRun = lit("step_lost_count = step_lost_count + CASE WHEN locked_by IS NULL THEN 0 ELSE 1 END")
  const takeLease = (lease: { readonly owner: unknown; readonly until: Statement.Fragment; readonly token: unknown }) =>
    sql`${lostRun}, locked_by = ${lease.owner}, locked_until = ${lease.until}, lease_token = ${lease.token}, updated_at = ${now}`
  /**
   * MySQL has no UPDATE or INSERT … RETURNING (MariaDB has INSERT … RETURNING, MySQL 8 does not): there a write reports
   * affected rows and the row is read after it.
   */
  const returning = (what: Statement.Fragment) => dialect === "mysql" ? lit("") : sql` RETURNING ${what}`

  /** A guarded write: true when it changed the row. */
  const update = (set: Statement.Fragment, where: Statement.Fragment): Effect.Effect<boolean, SqlError> =>
    dialect === "mysql"
      ? Effect.map(sql`UPDATE ${table} SET ${set} WHERE ${where}`.raw, (result) => affectedRows(result) > 0)
      : Effect.map(sql`UPDATE ${table} SET ${set} WHERE ${where} RETURNING id`.withoutTransform, (rows) =>
        rows.length > 0)

  /** A guarded write returning the row after it (MySQL: the write, then a read of the row). */
  const updateReturning = (
    set: Statement.Fragment,
    where: Statement.Fragment,
    runId: string
  ): Effect.Effect<ProgramRecord | undefined, SqlError> =>
    dialect === "mysql"
      ? Effect.flatMap(update(set, where), (changed) => changed ? selectOne(runId) : Effect.succeed(undefined))
      : Effect.map(
        sql<Row>`UPDATE ${table} SET ${set} WHERE ${where} RETURNING ${columns}`.withoutTransform,
        (rows) => rows[0] === undefined ? undefined : decodeRow(rows[0])
      )

  const selectOne = (runId: string) =>
    Effect.map(
      sql<Row>`SELECT ${columns} FROM ${table} WHERE run_id = ${runId}`.withoutTransform,
      (rows) => rows[0] === undefined ? undefined : decodeRow(rows[0])
    )

  const list = (query: Program.ListQuery) => {
    const clauses: Array<Statement.Fragment> = filterClauses(query)
    if (query.after !== undefined) clauses.push(sql`id ${lit(query.order === "asc" ? ">" : "<")} ${query.after}`)
    const order = lit(query.order === "asc" ? "ASC" : "DESC")
    const limit = Math.max(0, Math.trunc(query.limit ?? 100))
    const offset = Math.max(0, Math.trunc(query.offset ?? 0))
    return Effect.map(
      sql<Row>`SELECT ${columns} FROM ${table} WHERE ${sql.and(clauses)} ORDER BY id ${order} LIMIT ${
        lit(String(limit))
      } OFFSET ${lit(String(offset))}`.withoutTransform,
      (rows) => rows.map((row) => decodeRow(row))
    )
  }

  // -------------------------------------------------------------------------------------------------------------------
  // The hot statements: written above like every other, compiled once here, their parameters bound per call, and run
  // prepared where `SqlDatabase` owns the connection (see `PreparedStatements`), through the client elsewhere.

  const insertStatement = compileOnce(
    ["runId", "programData", "jobs", "jobData"],
    (p) => {
      const json = (value: unknown) => dialect === "pg" ? sql`${value}::jsonb` : sql`${value}`
      return sql`INSERT INTO ${table} (run_id, program_data, jobs, job_data, step, step_retry_count, created_at, updated_at, next_run_at) VALUES (${p.runId}, ${
        json(p.programData)
      }, ${json(p.jobs)}, ${json(p.jobData)}, 0, 0, ${now}, ${now}, ${now})${returning(columns)}`
    }
  )
  const insert = (program: Program.NewProgram): Effect.Effect<ProgramRecord, SqlError> => {
    const params = insertStatement.bind({
      runId: program.runId,
      programData: JSON.stringify(program.programData ?? null),
      jobs: JSON.stringify(program.jobs),
      jobData: JSON.stringify(program.jobData ?? null)
    })
    // MySQL: the insert, then a read of the row, in the caller's transaction if there is one.
    if (dialect === "mysql") {
      return Effect.zipRight(
        sql.unsafe(insertStatement.text, params).raw,
        Effect.flatMap(selectOne(program.runId), (row) =>
          row === undefined
            ? Effect.fail(new SqlError({ message: "the inserted program could not be read back" }))
            : Effect.succeed(row))
      )
    }
    // Inside the application's transaction (`createProgram` in its `sql.withTransaction`) the insert must join it, and
    // only the client runs a statement on the transaction's connection: the prepared path would take another pool
    // connection on PostgreSQL (the program outlived a rollback) and wait for the transaction's own lock on SQLite (a
    // deadlock).
    const rows = Effect.flatMap(inTransaction, (open) =>
      open
        ? sql.unsafe(insertStatement.text, params).withoutTransform
        : prepared.run(insertStatement.text, params))
    return Effect.map(rows, (rows) => decodeRow(rows[0] as Row))
  }

  const claimStatement = compileOnce(
    ["owner", "leaseFor", "token", "runId", "step"],
    (p) =>
      sql`UPDATE ${table} SET ${
        takeLease({ owner: p.owner, until: plus(p.leaseFor), token: p.token })
      } WHERE run_id = ${p.runId} AND step = ${p.step} AND ${rowInProgress} AND next_run_at <= ${now} AND ${leaseFree}${
        returning(columns)
      }`
  )
  const claim = (target: WakeUp, owner: string, leaseFor: Duration.Duration) => {
    const params = claimStatement.bind({
      owner,
      leaseFor: interval(leaseFor),
      token: randomUUID(),
      runId: target.runId,
      step: target.step
    })
    return claimOne(claimStatement.text, params, target.runId)
  }

  /**
   * Runs a single-row claim (`… RETURNING` the row; on MySQL, the update and then a read of the row when it changed):
   * the row as claimed, or undefined when the guard refused it.
   */
  const claimOne = (
    text: string,
    params: Array<unknown>,
    runId: string
  ): Effect.Effect<ProgramRecord | undefined, SqlError> =>
    dialect === "mysql"
      ? Effect.flatMap(sql.unsafe(text, params).raw, (result) =>
        affectedRows(result) > 0 ? selectOne(runId) : Effect.succeed(undefined))
      : Effect.map(prepared.run(text, params), (rows) => rows[0] === undefined ? undefined : decodeRow(rows[0] as Row))

  const advanceStatement = (finished: boolean) =>
    compileOnce(
      ["runId", "step", "token"],
      (p) =>
        finished
          ? sql`UPDATE ${table} SET ${released}, finished_at = ${now}, step_retry_count = 0, step_lost_count = 0, updated_at = ${now} WHERE ${
            holds(p)
          }${returning(lit("id"))}`
          : sql`UPDATE ${table} SET ${released}, step = step + 1, step_retry_count = 0, step_lost_count = 0, next_run_at = ${now}, updated_at = ${now} WHERE ${
            holds(p)
          }${returning(lit("id"))}`
    )
  const advanceStatements = { next: advanceStatement(false), finished: advanceStatement(true) }
  /** Moves the program on, guarded by the lease; true when it did. */
  const advance = (lease: Lease, finished: boolean): Effect.Effect<boolean, SqlError> => {
    const statement = finished ? advanceStatements.finished : advanceStatements.next
    const params = statement.bind({ runId: lease.runId, step: lease.step, token: lease.token })
    return dialect === "mysql"
      ? Effect.map(sql.unsafe(statement.text, params).raw, (result) => affectedRows(result) > 0)
      : Effect.map(prepared.run(statement.text, params), (rows) => rows.length > 0)
  }

  /**
   * Continuation: the advance and the claim of the next step in one statement, guarded like `advance`. The next step
   * starts with no retries and no lost runs, due now, leased to `owner` under `nextToken`.
   */
  const advanceAndClaimStatement = compileOnce(
    ["owner", "leaseFor", "nextToken", "runId", "step", "token"],
    (p) =>
      sql`UPDATE ${table} SET step = step + 1, step_retry_count = 0, step_lost_count = 0, next_run_at = ${now}, locked_by = ${p.owner}, locked_until = ${
        plus(p.leaseFor)
      }, lease_token = ${p.nextToken}, updated_at = ${now} WHERE ${holds(p)}${returning(columns)}`
  )
  const advanceAndClaim = (
    lease: Lease,
    owner: string,
    leaseFor: Duration.Duration,
    nextToken: string
  ): Effect.Effect<ProgramRecord | undefined, SqlError> => {
    const params = advanceAndClaimStatement.bind({
      owner,
      leaseFor: interval(leaseFor),
      nextToken,
      runId: lease.runId,
      step: lease.step,
      token: lease.token
    })
    return claimOne(advanceAndClaimStatement.text, params, lease.runId)
  }

  // The rows of one claim share its token: a token fences the claims of one row, so it only has to differ from that
  // row's earlier ones. PostgreSQL skips rows other workers are claiming; SQLite has one writer at a time, so the
  // subquery and the update are one atomic statement. (MySQL takes no LIMIT in an IN subquery: see `claimNext`.)
  const claimNextStatement = dialect === "mysql" ? undefined : compileOnce(
    ["owner", "leaseFor", "token", "limit"],
    (p) =>
      sql`UPDATE ${table} SET ${
        takeLease({ owner: p.owner, until: plus(p.leaseFor), token: p.token })
      } WHERE id IN (SELECT id FROM ${table} WHERE ${due} ORDER BY next_run_at LIMIT ${p.limit}${
        lit(dialect === "pg" ? " FOR UPDATE SKIP LOCKED" : "")
      }) RETURNING ${columns}`
  )

  /** Claims up to `limit` due rows, oldest first, skipping rows other workers are claiming right now. */
  const claimNext = (
    owner: string,
    leaseFor: Duration.Duration,
    limit: number
  ): Effect.Effect<ReadonlyArray<ProgramRecord>, SqlError> => {
    const n = Math.max(1, Math.trunc(limit))
    if (claimNextStatement !== undefined) {
      const params = claimNextStatement.bind({ owner, leaseFor: interval(leaseFor), token: randomUUID(), limit: n })
      return Effect.map(prepared.run(claimNextStatement.text, params), (rows) => rows.map((row) => decodeRow(row as Row)))
    }
    // Lock the rows (skipping locked ones), lease them, and return them as leased.
    return sql.withTransaction(Effect.gen(function*() {
      const rows = yield* sql<
        Row & { readonly db_until: unknown }
      >`SELECT ${columns}, ${after(leaseFor)} AS db_until FROM ${table} WHERE ${due} ORDER BY next_run_at LIMIT ${
        lit(String(n))
      } FOR UPDATE SKIP LOCKED`
        .withoutTransform
      if (rows.length === 0) return []
      const until = rows[0]!.db_until
      const token = randomUUID()
      yield* sql`UPDATE ${table} SET ${takeLease({ owner, until: sql`${until}`, token })} WHERE ${
        sql.in("id", rows.map((row) => row.id))
      }`.raw
      return rows.map((row) => {
        const before = decodeRow(row)
        return {
          ...before,
          stepLostCount: before.stepLostCount + (before.lockedBy === null ? 0 : 1),
          lockedBy: owner,
          lockedUntil: toDate(until),
          leaseToken: token
        }
      })
    }))
  }

  const extendLease = (lease: Lease, leaseFor: Duration.Duration) =>
    Effect.flatMap(update(sql`locked_until = ${after(leaseFor)}`, holds(lease)), (held) =>
      held
        ? Effect.succeed("held" as const)
        : Effect.map(
          sql<
            { readonly errored_at: unknown; readonly step: number | string }
          >`SELECT errored_at, step FROM ${table} WHERE run_id = ${lease.runId}`.withoutTransform,
          (rows) =>
            rows[0] !== undefined && rows[0].errored_at !== null && Number(rows[0].step) === lease.step
              ? "cancelled" as const
              : "lost" as const
        ))

  /** Replaces one key of `job_data` in place, so concurrent writers of other keys (or columns) lose nothing. */
  const writeJobData = (lease: Lease, jobName: string, value: unknown) => {
    const text = JSON.stringify(value ?? null)
    const set = dialect === "pg"
      ? sql`job_data = jsonb_set(CASE WHEN jsonb_typeof(job_data) = 'object' THEN job_data ELSE '{}'::jsonb END, ARRAY[${jobName}]::text[], ${text}::jsonb, true), updated_at = ${now}`
      : dialect === "mysql"
      ? sql`job_data = JSON_SET(CASE WHEN JSON_VALID(job_data) AND JSON_TYPE(job_data) = 'OBJECT' THEN job_data ELSE '{}' END, ${
        jsonPath(jobName)
      }, JSON_EXTRACT(${text}, '$')), updated_at = ${now}`
      : sql`job_data = json_set(CASE WHEN json_valid(job_data) AND json_type(job_data) = 'object' THEN job_data ELSE '{}' END, ${
        jsonPath(jobName)
      }, json(${text})), updated_at = ${now}`
    return update(set, holds(lease))
  }

  const scheduleRetry = (lease: Lease, errorMessage: string, delay: Duration.Duration, countAttempt: boolean) =>
    update(
      sql`${released}, error_message = ${Program.storableText(errorMessage)}, step_retry_count = step_retry_count + ${
        countAttempt ? 1 : 0
      }, next_run_at = ${after(delay)}, updated_at = ${now}`,
      holds(lease)
    )

  const fail = (lease: Lease, errorMessage: string) =>
    update(
      sql`${released}, errored_at = ${now}, error_message = ${Program.storableText(errorMessage)}, updated_at = ${now}`,
      holds(lease)
    )

  const release = (lease: Lease) =>
    update(
      sql`${released}, updated_at = ${now}`,
      sql`run_id = ${lease.runId} AND step = ${lease.step} AND lease_token = ${lease.token} AND locked_by IS NOT NULL`
    )

  /** Gives back several claimed rows at once (the queue's undelivered prefetch). */
  const releaseAll = (leases: ReadonlyArray<Lease>) => {
    if (leases.length === 0) return Effect.succeed(false)
    const clauses = leases.map((lease) =>
      sql`(run_id = ${lease.runId} AND step = ${lease.step} AND lease_token = ${lease.token})`
    )
    return update(sql`${released}, updated_at = ${now}`, sql.or(clauses))
  }

  const cancel = (runId: string, reason: string) =>
    updateReturning(
      sql`errored_at = ${now}, error_message = ${Program.storableText(reason)}, updated_at = ${now}`,
      sql`run_id = ${runId} AND ${rowInProgress}`,
      runId
    )

  // A live lease is left alone: its run goes on, or sees the cancel at its next heartbeat, under its own token.
  // (`locked_by` is assigned first: MySQL evaluates the second CASE with it already changed, but not `locked_until`.)
  const resume = (runId: string) =>
    updateReturning(
      sql`locked_by = CASE WHEN locked_until > ${now} THEN locked_by ELSE NULL END, locked_until = CASE WHEN locked_until > ${now} THEN locked_until ELSE NULL END, errored_at = NULL, error_message = NULL, step_retry_count = 0, step_lost_count = 0, next_run_at = ${now}, updated_at = ${now}`,
      sql`run_id = ${runId} AND errored_at IS NOT NULL AND finished_at IS NULL`,
      runId
    )

  const findStale = (idleFor: Duration.Duration, limit: number, queueHead?: Date) => {
    const millis = Math.max(0, Math.round(Duration.toMillis(idleFor)))
    const idleSince = dialect === "pg"
      ? sql`(now() - make_interval(secs => ${millis / 1000}::double precision))`
      : dialect === "mysql"
      ? sql`DATE_SUB(UTC_TIMESTAMP(3), INTERVAL ${millis * 1000} MICROSECOND)`
      : sql`strftime('%Y-%m-%d %H:%M:%f', 'now', ${`-${millis / 1000} seconds`})`
    // Due before the queue's head by `idleFor`: behind it, a step is still queued. Both times are the database's.
    const beforeHead = queueHead === undefined
      ? lit("1 = 1")
      : sql`next_run_at <= ${timestampParam(new Date(queueHead.getTime() - millis))}`
    // Back-off: a row touched by an earlier sweep waits, since then, at least as long as it had waited by then.
    const backedOff = dialect === "pg"
      ? lit("now() - updated_at >= updated_at - next_run_at")
      : dialect === "mysql"
      ? lit(
        "TIMESTAMPDIFF(MICROSECOND, updated_at, UTC_TIMESTAMP(3)) >= TIMESTAMPDIFF(MICROSECOND, next_run_at, updated_at)"
      )
      : lit("julianday('now') - julianday(updated_at) >= julianday(updated_at) - julianday(next_run_at)")
    const stale =
      sql`${inProgress} AND ${leaseFree} AND next_run_at <= ${idleSince} AND updated_at <= ${idleSince} AND ${backedOff} AND ${beforeHead}`
    // Touching `updated_at` marks the rows: each is returned once per idle period, not at every sweep of every worker.
    return markReturning(sql`updated_at = ${now}`, stale, "next_run_at", limit)
  }

  /** Leases that expired without being released: cleared (`locked_by` kept, for the lost-run count) and returned. */
  const recoverExpired = (limit: number) =>
    markReturning(
      sql`locked_until = NULL, updated_at = ${now}`,
      sql`${inProgress} AND locked_by IS NOT NULL AND locked_until <= ${now}`,
      "locked_until",
      limit
    )

  /** Applies `set` to at most `limit` rows matching `where` (skipping rows others are locking) and returns them. */
  const markReturning = (
    set: Statement.Fragment,
    where: Statement.Fragment,
    orderBy: "next_run_at" | "locked_until",
    limit: number
  ) => {
    const n = lit(String(Math.max(1, Math.trunc(limit))))
    const order = lit(orderBy)
    type MarkedRow = { readonly id: number | string; readonly run_id: string; readonly step: number | string }
    const toWakeUps = (rows: ReadonlyArray<MarkedRow>) =>
      rows.map((row): WakeUp => ({ runId: row.run_id, step: Number(row.step) }))
    switch (dialect) {
      case "pg":
        return Effect.map(
          sql<MarkedRow>`UPDATE ${table} SET ${set} WHERE id IN (SELECT id FROM ${table} WHERE ${where} ORDER BY ${order} LIMIT ${n} FOR UPDATE SKIP LOCKED) RETURNING id, run_id, step`
            .withoutTransform,
          toWakeUps
        )
      case "sqlite":
        return Effect.map(
          sql<MarkedRow>`UPDATE ${table} SET ${set} WHERE id IN (SELECT id FROM ${table} WHERE ${where} ORDER BY ${order} LIMIT ${n}) RETURNING id, run_id, step`
            .withoutTransform,
          toWakeUps
        )
      case "mysql":
        return sql.withTransaction(Effect.gen(function*() {
          const rows = yield* sql<MarkedRow>`SELECT id, run_id, step FROM ${table} WHERE ${where} ORDER BY ${order} LIMIT ${n} FOR UPDATE SKIP LOCKED`
            .withoutTransform
          if (rows.length === 0) return []
          yield* sql`UPDATE ${table} SET ${set} WHERE ${sql.in("id", rows.map((row) => row.id))}`.raw
          return toWakeUps(rows)
        }))
    }
  }

  /**
   * Counts for `/metrics`, in one statement on the database clock. It reads the whole table: a scrape every 15 s
   * costs little beside the executor's statements, and no index serves all three.
   */
  const stats = Effect.gen(function*() {
    const oldestDue = sql`MIN(CASE WHEN ${due} THEN next_run_at END)`
    const age = dialect === "pg"
      ? sql`EXTRACT(EPOCH FROM (now() - ${oldestDue}))`
      : dialect === "mysql"
      ? sql`TIMESTAMPDIFF(MICROSECOND, ${oldestDue}, UTC_TIMESTAMP(3)) / 1000000`
      : sql`(julianday('now') - julianday(${oldestDue})) * 86400`
    type StatsRow = { readonly in_progress: unknown; readonly errored: unknown; readonly oldest_due_age: unknown }
    const rows = yield* sql<StatsRow>`SELECT SUM(CASE WHEN ${inProgress} THEN 1 ELSE 0 END) AS in_progress, SUM(CASE WHEN errored_at IS NOT NULL THEN 1 ELSE 0 END) AS errored, ${age} AS oldest_due_age FROM ${table}`
      .withoutTransform
    const row = rows[0]
    const count = (value: unknown) => value === null || value === undefined ? 0 : Number(value)
    return {
      inProgress: count(row?.in_progress),
      errored: count(row?.errored),
      oldestDueAgeSeconds: row?.oldest_due_age === null || row?.oldest_due_age === undefined
        ? null
        : Math.max(0, Number(row.oldest_due_age))
    }
  })
  // -------------------------------------------------------------------------------------------------------------------
  // Search, batch creation, bulk operations and retention.

  /** The `ProgramFilter` as conditions; validated by `ProgramExecutor` before it gets here. */
  const filterClauses = (filter: Program.ProgramFilter): Array<Statement.Fragment> => {
    const clauses: Array<Statement.Fragment> = []
    if (filter.inProgressOnly || filter.status === "in_progress") clauses.push(inProgress)
    if (filter.status === "finished") clauses.push(lit("finished_at IS NOT NULL"))
    if (filter.status === "errored") clauses.push(lit("errored_at IS NOT NULL AND finished_at IS NULL"))
    if ((filter.stepRetryCountGte ?? 0) > 0) clauses.push(sql`step_retry_count >= ${filter.stepRetryCountGte ?? 0}`)
    if (filter.job !== undefined) {
      // The current job: `jobs[step]`. Not indexed: an index on it would be rewritten at every step.
      clauses.push(
        dialect === "pg"
          ? sql`jobs ->> step = ${filter.job}`
          : dialect === "mysql"
          ? sql`JSON_UNQUOTE(JSON_EXTRACT(jobs, CONCAT('$[', step, ']'))) = ${filter.job}`
          : sql`json_extract(jobs, '$[' || step || ']') = ${filter.job}`
      )
    }
    if (filter.createdAfter !== undefined) clauses.push(sql`created_at >= ${timestampParam(filter.createdAfter)}`)
    if (filter.createdBefore !== undefined) clauses.push(sql`created_at < ${timestampParam(filter.createdBefore)}`)
    if (filter.runIdPrefix !== undefined) {
      const prefix = filter.runIdPrefix
      const pattern = `${prefix.replace(/[!%_]/g, "!$&")}%`
      // SQLite's LIKE ignores case and takes no index here: a range on the run_id index (binary order), made exact.
      clauses.push(
        dialect === "sqlite"
          ? sql`run_id >= ${prefix} AND run_id < ${`${prefix}\u{10FFFF}`} AND substr(run_id, 1, length(${prefix})) = ${prefix}`
          : dialect === "mysql"
          ? sql`run_id LIKE ${pattern} ESCAPE '!' AND CAST(LEFT(run_id, CHAR_LENGTH(${prefix})) AS BINARY) = CAST(${prefix} AS BINARY)`
          : sql`run_id LIKE ${pattern} ESCAPE '!'`
      )
    }
    if (filter.dataContains !== undefined) {
      const leaves = Program.dataLeaves(filter.dataContains)
      if (typeof leaves === "string") {
        clauses.push(lit("1 = 0"))
      } else if (dialect === "pg") {
        clauses.push(sql`program_data @> ${JSON.stringify(filter.dataContains)}::jsonb`)
      } else if (dialect === "mysql") {
        clauses.push(sql`JSON_CONTAINS(program_data, ${JSON.stringify(filter.dataContains)})`)
      } else {
        for (const leaf of leaves) {
          const path = `$${leaf.path.map((key) => `.${JSON.stringify(key)}`).join("")}`
          const type = sql`json_type(program_data, ${path})`
          const value = sql`json_extract(program_data, ${path})`
          clauses.push(
            leaf.value === null
              ? sql`${type} = 'null'`
              : typeof leaf.value === "boolean"
              ? sql`${type} = ${leaf.value ? "true" : "false"}`
              : typeof leaf.value === "number"
              ? sql`${type} IN ('integer', 'real') AND ${value} = ${leaf.value}`
              : sql`${type} = 'text' AND ${value} = ${leaf.value}`
          )
        }
      }
    }
    return clauses
  }

  /** Rows per multi-row INSERT: 6 parameters a row stay far below every dialect's limit (SQLite 32,766). */
  const insertChunk = 1000

  /**
   * One multi-row INSERT per chunk. A taken idempotency key is skipped by the key's unique index (ON CONFLICT DO
   * NOTHING; MySQL: a no-op ON DUPLICATE KEY UPDATE), never by a read first, so concurrent callers cannot both insert.
   */
  const insertManyChunk = (programs: ReadonlyArray<Program.NewProgram>) =>
    Effect.gen(function*() {
      const json = (value: unknown) =>
        dialect === "pg" ? sql`${JSON.stringify(value ?? null)}::jsonb` : sql`${JSON.stringify(value ?? null)}`
      const row = (program: Program.NewProgram) => {
        const nextRunAt = program.startAt !== undefined
          ? timestampParam(program.startAt)
          : program.startAfter !== undefined
          ? after(program.startAfter)
          : now
        return sql`(${program.runId}, ${json(program.programData)}, ${json(program.jobs)}, ${
          json(program.jobData)
        }, 0, 0, ${now}, ${now}, ${nextRunAt}, ${program.idempotencyKey ?? null})`
      }
      const insertInto = (rows: ReadonlyArray<Program.NewProgram>) =>
        sql`INSERT INTO ${table} (run_id, program_data, jobs, job_data, step, step_retry_count, created_at, updated_at, next_run_at, idempotency_key) VALUES ${
          sql.csv(rows.map(row))
        }`
      const head = insertInto(programs)
      const byRunId = new Map<string, ProgramRecord>()
      if (dialect === "mysql") {
        // ON DUPLICATE KEY covers every unique index: programs without a key go in a plain INSERT, so that a duplicate
        // runId still fails the call there, as ON CONFLICT (idempotency_key) lets it fail elsewhere.
        const keyed = programs.filter((program) => program.idempotencyKey !== undefined)
        const plain = programs.filter((program) => program.idempotencyKey === undefined)
        if (plain.length > 0) yield* insertInto(plain).raw
        if (keyed.length > 0) yield* sql`${insertInto(keyed)} ON DUPLICATE KEY UPDATE id = id`.raw
      } else {
        const rows = yield* sql<Row>`${head} ON CONFLICT (idempotency_key) DO NOTHING RETURNING ${columns}`
          .withoutTransform
        for (const row of rows) byRunId.set(row.run_id, decodeRow(row))
      }
      const keys = programs.flatMap((program) =>
        program.idempotencyKey !== undefined && !byRunId.has(program.runId) ? [program.idempotencyKey] : []
      )
      const missing = programs.filter((program) => program.idempotencyKey === undefined && !byRunId.has(program.runId))
      const byKey = new Map<string, ProgramRecord>()
      if (keys.length > 0 || missing.length > 0) {
        // A locking read (MySQL): it sees the row a concurrent caller committed while this insert waited for its key.
        const where = sql.or([
          ...(missing.length > 0 ? [sql.in("run_id", missing.map((program) => program.runId))] : []),
          ...(keys.length > 0 ? [sql.in("idempotency_key", keys)] : [])
        ])
        const rows = yield* sql<Row>`SELECT ${columns} FROM ${table} WHERE ${where}${
          lit(dialect === "mysql" ? " LOCK IN SHARE MODE" : "")
        }`.withoutTransform
        for (const row of rows) {
          const program = decodeRow(row)
          byRunId.set(program.runId, program)
          if (program.idempotencyKey !== null) byKey.set(program.idempotencyKey, program)
        }
      }
      return yield* Effect.forEach(programs, (program) => {
        const own = byRunId.get(program.runId)
        if (own !== undefined) return Effect.succeed({ program: own, created: true })
        const existing = program.idempotencyKey === undefined ? undefined : byKey.get(program.idempotencyKey)
        return existing !== undefined
          ? Effect.succeed({ program: existing, created: false })
          : Effect.fail(new SqlError({ message: `the inserted program ${program.runId} could not be read back` }))
      })
    })

  /** All chunks in one transaction (all or nothing); it joins the caller's, if there is one. */
  const insertMany = (programs: ReadonlyArray<Program.NewProgram>) => {
    if (programs.length === 0) return Effect.succeed([])
    const chunks: Array<ReadonlyArray<Program.NewProgram>> = []
    for (let start = 0; start < programs.length; start += insertChunk) {
      chunks.push(programs.slice(start, start + insertChunk))
    }
    const all = Effect.map(Effect.forEach(chunks, insertManyChunk), (results) => results.flat())
    return chunks.length === 1 ? all : sql.withTransaction(all)
  }

  type ChangedRow = { readonly id: number | string; readonly run_id: string; readonly step: number | string }
  const toChanged = (rows: ReadonlyArray<ChangedRow>) =>
    rows.map((row) => ({ id: Number(row.id), runId: row.run_id, step: Number(row.step) }))

  /**
   * One guarded statement per batch: the rows after `afterId` in id order that match `filter` and `guard`, changed by
   * `set`. The outer `guard` is checked again on each row as it is written (PostgreSQL re-checks a row changed
   * meanwhile; MySQL locks the rows it selected first), so a program that moved since the selection is left alone.
   */
  const updateBatch = (
    guard: Statement.Fragment,
    set: Statement.Fragment,
    filter: Program.ProgramFilter,
    page: { readonly afterId: number; readonly limit: number }
  ) => {
    const n = lit(String(Math.max(1, Math.trunc(page.limit))))
    const where = sql.and([guard, ...filterClauses(filter), sql`id > ${page.afterId}`])
    if (dialect !== "mysql") {
      return Effect.map(
        sql<ChangedRow>`UPDATE ${table} SET ${set} WHERE id IN (SELECT id FROM ${table} WHERE ${where} ORDER BY id LIMIT ${n}) AND ${guard} RETURNING id, run_id, step`
          .withoutTransform,
        toChanged
      )
    }
    return sql.withTransaction(Effect.gen(function*() {
      const rows = yield* sql<ChangedRow>`SELECT id, run_id, step FROM ${table} WHERE ${where} ORDER BY id LIMIT ${n} FOR UPDATE`
        .withoutTransform
      if (rows.length === 0) return []
      yield* sql`UPDATE ${table} SET ${set} WHERE ${sql.in("id", rows.map((row) => row.id))} AND ${guard}`.raw
      return toChanged(rows)
    }))
  }

  const cancelBatch = (
    filter: Program.ProgramFilter,
    reason: string,
    page: { readonly afterId: number; readonly limit: number }
  ) =>
    updateBatch(
      inProgress,
      sql`errored_at = ${now}, error_message = ${Program.storableText(reason)}, updated_at = ${now}`,
      filter,
      page
    )

  const resumeBatch = (filter: Program.ProgramFilter, page: { readonly afterId: number; readonly limit: number }) =>
    updateBatch(
      lit("errored_at IS NOT NULL AND finished_at IS NULL"),
      sql`locked_by = CASE WHEN locked_until > ${now} THEN locked_by ELSE NULL END, locked_until = CASE WHEN locked_until > ${now} THEN locked_until ELSE NULL END, errored_at = NULL, error_message = NULL, step_retry_count = 0, step_lost_count = 0, next_run_at = ${now}, updated_at = ${now}`,
      filter,
      page
    )

  /**
   * What `prune` deletes, written so that an index serves it: on PostgreSQL and SQLite the partial indexes
   * `finished_idx` / `errored_at_idx`; on MySQL `due_idx`, whose leading columns are `(finished_at, errored_at)`.
   */
  const prunable = (kind: "finished" | "errored", before: Date) =>
    kind === "finished"
      ? sql`finished_at < ${timestampParam(before)}`
      : sql`errored_at < ${timestampParam(before)} AND finished_at IS NULL`

  /** One batch of `prune`: a DELETE of at most `limit` rows, in the order of the index that finds them. */
  const pruneStatement = (kind: "finished" | "errored", before: Date, limit: number) => {
    const n = lit(String(Math.max(1, Math.trunc(limit))))
    const where = prunable(kind, before)
    const order = lit(kind === "finished" ? "finished_at" : "errored_at")
    return dialect === "mysql"
      ? sql`DELETE FROM ${table} WHERE ${where} ORDER BY ${order} LIMIT ${n}`
      : sql`DELETE FROM ${table} WHERE id IN (SELECT id FROM ${table} WHERE ${where} ORDER BY ${order} LIMIT ${n}) AND ${where} RETURNING id`
  }

  /** Deletes up to `limit` rows in one short statement; how many it deleted. */
  const pruneBatch = (kind: "finished" | "errored", before: Date, limit: number) =>
    dialect === "mysql"
      ? Effect.map(pruneStatement(kind, before, limit).raw, affectedRows)
      : Effect.map(pruneStatement(kind, before, limit).withoutTransform, (rows) => rows.length)

  const countPrunable = (kind: "finished" | "errored", before: Date) =>
    Effect.map(
      sql<{ readonly count: number | string | bigint }>`SELECT COUNT(*) AS count FROM ${table} WHERE ${
        prunable(kind, before)
      }`.withoutTransform,
      (rows) => Number(rows[0]?.count ?? 0)
    )

  const migrate = migrateOnce(client, tableName, makeMigration(client, dialect, tableName))

  const retrying = <Args extends ReadonlyArray<any>, A>(
    f: (...args: Args) => Effect.Effect<A, SqlError>
  ): (...args: Args) => Effect.Effect<A, SqlError> =>
    dialect === "mysql"
      ? (...args) =>
        Effect.retry(f(...args), {
          while: isTransientLock,
          schedule: Schedule.exponential("5 millis").pipe(Schedule.intersect(Schedule.recurs(8)))
        })
      : f

  return {
    dialect,
    tableName,
    insert: retrying(insert),
    get: selectOne,
    list,
    claim: retrying(claim),
    claimNext: retrying(claimNext),
    extendLease: retrying(extendLease),
    writeJobData: retrying(writeJobData),
    advance: retrying(advance),
    advanceAndClaim: retrying(advanceAndClaim),
    scheduleRetry: retrying(scheduleRetry),
    fail: retrying(fail),
    release: retrying(release),
    recoverExpired: retrying(recoverExpired),
    releaseAll: retrying(releaseAll),
    cancel: retrying(cancel),
    resume: retrying(resume),
    findStale: retrying(findStale),
    stats,
    insertMany: retrying(insertMany),
    cancelBatch: retrying(cancelBatch),
    resumeBatch: retrying(resumeBatch),
    pruneBatch: retrying(pruneBatch),
    countPrunable,
    pruneStatement,
    migrate
  }
}

/** `$."name"` for SQLite and MySQL; names with a double quote or backslash are escaped as JSON strings. */
const jsonPath = (key: string) => `$.${JSON.stringify(key)}`

// ---------------------------------------------------------------------------------------------------------------------
// Migration

/** Columns added after the table's first release, with their definitions per dialect. */
const addedColumns: ReadonlyArray<{ readonly name: string; readonly type: Record<Dialect, string> }> = [
  { name: "lease_token", type: { pg: "text", mysql: "VARCHAR(64) NULL", sqlite: "TEXT" } },
  {
    name: "step_lost_count",
    type: { pg: "integer NOT NULL DEFAULT 0", mysql: "INT NOT NULL DEFAULT 0", sqlite: "INTEGER NOT NULL DEFAULT 0" }
  },
  { name: "idempotency_key", type: { pg: "text", mysql: "VARCHAR(255) NULL", sqlite: "TEXT" } }
]

/**
 * Adds the columns a table made by an earlier version lacks. Only to a table of ours (one with `next_run_at`): an old
 * library's table is left as it is (see the README's migration notes). Looked up in the catalog rather than with
 * `ADD COLUMN IF NOT EXISTS`, which SQLite and MySQL 8 do not have.
 */
const addMissingColumns = (sql: SqlClient.SqlClient, dialect: Dialect, tableName: string) =>
  Effect.gen(function*() {
    const rows = dialect === "sqlite"
      ? yield* sql<{ readonly name: string }>`SELECT name FROM pragma_table_info(${tableName})`.withoutTransform
      : dialect === "pg"
      ? yield* sql<{ readonly name: string }>`SELECT column_name AS name FROM information_schema.columns
          WHERE table_schema = current_schema() AND table_name = ${tableName}`.withoutTransform
      : yield* sql<{ readonly name: string }>`SELECT column_name AS name FROM information_schema.columns
          WHERE table_schema = DATABASE() AND table_name = ${tableName}`.withoutTransform
    const existing = new Set(rows.map((row) => String(row.name).toLowerCase()))
    if (!existing.has("next_run_at")) return
    for (const column of addedColumns) {
      if (existing.has(column.name)) continue
      yield* sql`ALTER TABLE ${sql(tableName)} ADD COLUMN ${sql(column.name)} ${sql.literal(column.type[dialect])}`
        .withoutTransform
    }
  })

/**
 * The tables each client has migrated (or is migrating) in this process. The repository's and the queue's layers
 * both need the table: the first to ask runs the migration, the others wait for its outcome. A failed or interrupted
 * one is forgotten, so the next layer to ask runs it again.
 */
const migrations = new WeakMap<SqlClient.SqlClient, Map<string, Deferred.Deferred<void, RepositoryError>>>()

const migrateOnce = (
  client: SqlClient.SqlClient,
  tableName: string,
  migrate: Effect.Effect<void, RepositoryError>
): Effect.Effect<void, RepositoryError> =>
  Effect.suspend(() => {
    let tables = migrations.get(client)
    if (tables === undefined) {
      tables = new Map()
      migrations.set(client, tables)
    }
    const known = tables.get(tableName)
    if (known !== undefined) {
      return Effect.catchAllCause(
        Deferred.await(known),
        (cause) => Cause.isInterruptedOnly(cause) ? migrateOnce(client, tableName, migrate) : Effect.failCause(cause)
      )
    }
    const done = Deferred.unsafeMake<void, RepositoryError>(FiberId.none)
    const started = tables
    started.set(tableName, done)
    return Effect.onExit(migrate, (exit) => {
      if (Exit.isFailure(exit)) started.delete(tableName)
      return Deferred.done(done, exit)
    })
  })

/**
 * Creates the table and its indexes when missing. Every statement is idempotent, and PostgreSQL serializes concurrent
 * starts on an advisory lock, so several workers may start at once. (Migrator's "locked" outcome returns before the
 * first worker's migration is done, which would let a second worker query a table that does not exist yet.)
 */
const makeMigration = (sql: SqlClient.SqlClient, dialect: Dialect, tableName: string) => {
  const t = sql(tableName)
  const ix = (suffix: string) => sql(indexName(tableName, suffix))
  /**
   * MySQL 8 has no CREATE INDEX IF NOT EXISTS (MariaDB has): the index is looked up in the catalog and created when
   * missing. A worker starting at the same moment may create it first: its duplicate key name (1061) is success.
   */
  const mysqlIndex = (suffix: string, create: (name: Statement.Identifier) => Statement.Statement<unknown>) =>
    Effect.gen(function*() {
      const name = indexName(tableName, suffix)
      const found = yield* sql`SELECT 1 AS found FROM information_schema.statistics
          WHERE table_schema = DATABASE() AND table_name = ${tableName} AND index_name = ${name} LIMIT 1`.withoutTransform
      if (found.length > 0) return
      yield* create(sql(name)).withoutTransform.pipe(Effect.catchIf(isDuplicateKeyName, () => Effect.void))
    })
  const plain = (statements: ReadonlyArray<Statement.Statement<unknown>>) =>
    statements.map((statement) => statement.withoutTransform)
  /**
   * PostgreSQL and SQLite, for idempotent creation and retention. NULL keys do not collide. The prune indexes are
   * partial: a row in progress is in neither, so they cost nothing per step, one entry when a program ends.
   */
  const laterIndexes = [
    sql`CREATE UNIQUE INDEX IF NOT EXISTS ${ix("idempotency_key")} ON ${t} (idempotency_key)`,
    sql`CREATE INDEX IF NOT EXISTS ${ix("finished_idx")} ON ${t} (finished_at) WHERE finished_at IS NOT NULL`,
    sql`CREATE INDEX IF NOT EXISTS ${ix("errored_at_idx")} ON ${t} (errored_at) WHERE errored_at IS NOT NULL AND finished_at IS NULL`
  ]
  const statements: Array<Effect.Effect<unknown, SqlError>> = dialect === "pg"
    ? plain([
      sql`CREATE TABLE IF NOT EXISTS ${t} (
  id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  run_id text NOT NULL,
  program_data jsonb NOT NULL DEFAULT '{}'::jsonb,
  jobs jsonb NOT NULL,
  job_data jsonb NOT NULL DEFAULT '{}'::jsonb,
  step integer NOT NULL DEFAULT 0,
  step_retry_count integer NOT NULL DEFAULT 0,
  finished_at timestamptz,
  errored_at timestamptz,
  error_message text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  locked_by text,
  locked_until timestamptz,
  lease_token text,
  step_lost_count integer NOT NULL DEFAULT 0,
  next_run_at timestamptz NOT NULL DEFAULT now(),
  idempotency_key text
)`,
      sql`CREATE UNIQUE INDEX IF NOT EXISTS ${ix("run_id_key")} ON ${t} (run_id)`,
      // Claim, queue and sweeper: only unfinished rows are indexed, so finished history costs nothing per step.
      sql`CREATE INDEX IF NOT EXISTS ${ix("due_idx")} ON ${t} (next_run_at) WHERE finished_at IS NULL AND errored_at IS NULL`,
      sql`CREATE INDEX IF NOT EXISTS ${ix("active_id_idx")} ON ${t} (id) WHERE finished_at IS NULL AND errored_at IS NULL`,
      sql`CREATE INDEX IF NOT EXISTS ${ix("errored_id_idx")} ON ${t} (id) WHERE errored_at IS NOT NULL AND finished_at IS NULL`,
      // Recovery of expired leases.
      sql`CREATE INDEX IF NOT EXISTS ${ix("leased_idx")} ON ${t} (locked_until) WHERE finished_at IS NULL AND errored_at IS NULL`,
      ...laterIndexes
    ])
    : dialect === "mysql"
    ? [
      sql`CREATE TABLE IF NOT EXISTS ${t} (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  run_id VARCHAR(64) NOT NULL,
  program_data JSON NOT NULL,
  jobs JSON NOT NULL,
  job_data JSON NOT NULL,
  step INT NOT NULL DEFAULT 0,
  step_retry_count INT NOT NULL DEFAULT 0,
  finished_at DATETIME(3) NULL,
  errored_at DATETIME(3) NULL,
  error_message LONGTEXT NULL,
  created_at DATETIME(3) NOT NULL,
  updated_at DATETIME(3) NOT NULL,
  locked_by VARCHAR(255) NULL,
  locked_until DATETIME(3) NULL,
  lease_token VARCHAR(64) NULL,
  step_lost_count INT NOT NULL DEFAULT 0,
  next_run_at DATETIME(3) NOT NULL,
  idempotency_key VARCHAR(255) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`.withoutTransform,
      mysqlIndex("run_id_key", (name) => sql`CREATE UNIQUE INDEX ${name} ON ${t} (run_id)`),
      // No partial indexes: IS NULL is an equality lookup, so the unfinished rows are still a contiguous range.
      mysqlIndex("due_idx", (name) => sql`CREATE INDEX ${name} ON ${t} (finished_at, errored_at, next_run_at)`),
      mysqlIndex("active_id_idx", (name) => sql`CREATE INDEX ${name} ON ${t} (finished_at, errored_at, id)`),
      mysqlIndex("leased_idx", (name) => sql`CREATE INDEX ${name} ON ${t} (finished_at, errored_at, locked_until)`),
      // NULL keys do not collide: programs created without a key are not limited.
      mysqlIndex("idempotency_key", (name) => sql`CREATE UNIQUE INDEX ${name} ON ${t} (idempotency_key)`)
    ]
    : plain([
      sql`CREATE TABLE IF NOT EXISTS ${t} (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  run_id TEXT NOT NULL,
  program_data TEXT NOT NULL DEFAULT '{}',
  jobs TEXT NOT NULL,
  job_data TEXT NOT NULL DEFAULT '{}',
  step INTEGER NOT NULL DEFAULT 0,
  step_retry_count INTEGER NOT NULL DEFAULT 0,
  finished_at TEXT,
  errored_at TEXT,
  error_message TEXT,
  created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  locked_by TEXT,
  locked_until TEXT,
  lease_token TEXT,
  step_lost_count INTEGER NOT NULL DEFAULT 0,
  next_run_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  idempotency_key TEXT
)`,
      sql`CREATE UNIQUE INDEX IF NOT EXISTS ${ix("run_id_key")} ON ${t} (run_id)`,
      sql`CREATE INDEX IF NOT EXISTS ${ix("due_idx")} ON ${t} (next_run_at) WHERE finished_at IS NULL AND errored_at IS NULL`,
      sql`CREATE INDEX IF NOT EXISTS ${ix("active_id_idx")} ON ${t} (id) WHERE finished_at IS NULL AND errored_at IS NULL`,
      sql`CREATE INDEX IF NOT EXISTS ${ix("errored_id_idx")} ON ${t} (id) WHERE errored_at IS NOT NULL AND finished_at IS NULL`,
      sql`CREATE INDEX IF NOT EXISTS ${ix("leased_idx")} ON ${t} (locked_until) WHERE finished_at IS NULL AND errored_at IS NULL`,
      ...laterIndexes
    ])
  const all = Effect.zipRight(
    addMissingColumns(sql, dialect, tableName),
    Effect.forEach(statements, (statement) => statement, { discard: true })
  )
  const run = dialect === "pg"
    ? sql.withTransaction(
      Effect.zipRight(sql`SELECT pg_advisory_xact_lock(hashtext(${`program-executor:${tableName}`}))`, all)
    )
    : all
  // A concurrent start can still collide on the catalog (MySQL DDL is not transactional): run it again.
  return run.pipe(
    Effect.retry(Schedule.exponential("50 millis").pipe(Schedule.intersect(Schedule.recurs(5)))),
    Effect.mapError(toRepositoryError(`creating the table ${tableName}`))
  )
}
