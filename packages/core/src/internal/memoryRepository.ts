import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import { randomUUID } from "node:crypto"
import type { ProgramRecord } from "../Program.js"
import {
  defaultListLimit,
  matchesFilter,
  type NewProgram,
  ProgramNotFoundError,
  ProgramStateError,
  status,
  storableText
} from "../Program.js"
import {
  type ChangedProgram,
  type InsertedProgram,
  type Lease,
  type ProgramRepository,
  RepositoryError
} from "../ProgramRepository.js"

/** Stored values go through JSON, as they do in SQL, so memory-backed tests catch what a database would. */
const jsonCopy = <A>(value: A): A => JSON.parse(JSON.stringify(value))

export const makeMemoryRepository: Effect.Effect<ProgramRepository["Type"]> = Effect.gen(function*() {
  const rows = yield* Ref.make(new Map<string, ProgramRecord>())
  let nextId = 1
  const now = Clock.currentTimeMillis.pipe(Effect.map((millis) => new Date(millis)))

  /** Applies `change` to the row if `guard` accepts it, atomically; returns the row after the change. */
  const updateIf = (
    runId: string,
    guard: (row: ProgramRecord, now: Date) => boolean,
    change: (row: ProgramRecord, now: Date) => Partial<ProgramRecord>
  ) =>
    Effect.flatMap(now, (at) =>
      Ref.modify(rows, (map): [Option.Option<ProgramRecord>, Map<string, ProgramRecord>] => {
        const row = map.get(runId)
        if (row === undefined || !guard(row, at)) return [Option.none(), map]
        const updated: ProgramRecord = { ...row, updatedAt: at, ...change(row, at) }
        // In place: copying the map would make every step cost O(programs). Rows themselves are never mutated.
        return [Option.some(updated), map.set(runId, updated)]
      }))

  const holds = (lease: Lease) => (row: ProgramRecord, at: Date) =>
    row.step === lease.step && row.leaseToken === lease.token && row.lockedUntil !== null &&
    row.lockedUntil > at && row.finishedAt === null && row.erroredAt === null

  const released = { lockedBy: null, lockedUntil: null } as const
  const inProgress = (row: ProgramRecord) => row.finishedAt === null && row.erroredAt === null
  const plus = (at: Date, duration: Duration.Duration) => new Date(at.getTime() + Duration.toMillis(duration))

  const find = (runId: string) => Ref.get(rows).pipe(Effect.map((map) => Option.fromNullable(map.get(runId))))

  const newRow = (program: NewProgram, at: Date): ProgramRecord => ({
    id: nextId++,
    runId: program.runId,
    jobs: [...program.jobs],
    programData: jsonCopy(program.programData),
    jobData: jsonCopy(program.jobData),
    step: 0,
    stepRetryCount: 0,
    finishedAt: null,
    erroredAt: null,
    errorMessage: null,
    createdAt: at,
    updatedAt: at,
    lockedBy: null,
    lockedUntil: null,
    leaseToken: null,
    stepLostCount: 0,
    nextRunAt: program.startAt !== undefined
      ? new Date(program.startAt.getTime())
      : program.startAfter !== undefined
      ? plus(at, program.startAfter)
      : at,
    corruption: null,
    idempotencyKey: program.idempotencyKey ?? null
  })

  /** Applies `change` to up to `page.limit` rows after `page.afterId` in id order that `guard` accepts, atomically. */
  const updateBatch = (
    guard: (row: ProgramRecord, now: Date) => boolean,
    change: (row: ProgramRecord, now: Date) => Partial<ProgramRecord>,
    page: { readonly afterId: number; readonly limit: number }
  ) =>
    Effect.flatMap(now, (at) =>
      Ref.modify(rows, (map): [ReadonlyArray<ChangedProgram>, Map<string, ProgramRecord>] => {
        const chosen = Array.from(map.values())
          .filter((row) => row.id > page.afterId && guard(row, at))
          .sort((a, b) => a.id - b.id)
          .slice(0, page.limit)
        for (const row of chosen) map.set(row.runId, { ...row, updatedAt: at, ...change(row, at) })
        return [chosen.map((row) => ({ id: row.id, runId: row.runId, step: row.step })), map]
      }))

  const prunable = (kind: "finished" | "errored", before: Date) => (row: ProgramRecord) =>
    kind === "finished"
      ? row.finishedAt !== null && row.finishedAt < before
      : row.finishedAt === null && row.erroredAt !== null && row.erroredAt < before

  const batchOperations: Pick<
    ProgramRepository["Type"],
    "insertMany" | "cancelBatch" | "resumeBatch" | "pruneBatch" | "countPrunable"
  > = {
    insertMany: (programs) =>
      Effect.flatMap(now, (at) => {
        const runIds = new Set(programs.map((program) => program.runId))
        return Ref.modify(rows, (map): [Option.Option<ReadonlyArray<InsertedProgram>>, Map<string, ProgramRecord>] => {
          // As the run_id unique index: a duplicate fails the whole call, and nothing is stored.
          if (runIds.size < programs.length || programs.some((program) => map.has(program.runId))) {
            return [Option.none(), map]
          }
          const byKey = new Map<string, ProgramRecord>()
          for (const row of map.values()) if (row.idempotencyKey !== null) byKey.set(row.idempotencyKey, row)
          const result = programs.map((program): InsertedProgram => {
            const existing = program.idempotencyKey === undefined ? undefined : byKey.get(program.idempotencyKey)
            if (existing !== undefined) return { program: existing, created: false }
            const row = newRow(program, at)
            map.set(row.runId, row)
            if (row.idempotencyKey !== null) byKey.set(row.idempotencyKey, row)
            return { program: row, created: true }
          })
          return [Option.some(result), map]
        }).pipe(
          Effect.flatMap(Option.match({
            onNone: () => Effect.fail(new RepositoryError({ message: "inserting the programs failed: duplicate runId" })),
            onSome: Effect.succeed
          }))
        )
      }),

    cancelBatch: (filter, reason, page) =>
      updateBatch(
        (row) => inProgress(row) && matchesFilter(row, filter),
        (_, at) => ({ erroredAt: at, errorMessage: storableText(reason) }),
        page
      ),

    resumeBatch: (filter, page) =>
      updateBatch(
        (row) => row.erroredAt !== null && row.finishedAt === null && matchesFilter(row, filter),
        (row, at) => ({
          ...(row.lockedUntil !== null && row.lockedUntil > at ? {} : released),
          erroredAt: null,
          errorMessage: null,
          stepRetryCount: 0,
          stepLostCount: 0,
          nextRunAt: at
        }),
        page
      ),

    pruneBatch: (kind, before, limit) =>
      Ref.modify(rows, (map): [number, Map<string, ProgramRecord>] => {
        const doomed = Array.from(map.values()).filter(prunable(kind, before)).slice(0, limit)
        for (const row of doomed) map.delete(row.runId)
        return [doomed.length, map]
      }),

    countPrunable: (kind, before) =>
      Effect.map(Ref.get(rows), (map) => Array.from(map.values()).filter(prunable(kind, before)).length)
  }

  const service: ProgramRepository["Type"] = {
    ...batchOperations,
    insert: (program) =>
      Effect.flatMap(now, (at) =>
        Ref.modify(rows, (map) => {
          const row = newRow(program, at)
          return [row, map.set(row.runId, row)]
        })),

    get: find,

    list: (query) =>
      Effect.map(Ref.get(rows), (map) => {
        const order = query.order ?? "desc"
        const after = query.after
        return Array.from(map.values())
          .filter((row) =>
            matchesFilter(row, query) &&
            (after === undefined || (order === "asc" ? row.id > after : row.id < after))
          )
          .sort((a, b) => order === "asc" ? a.id - b.id : b.id - a.id)
          .slice(query.offset ?? 0, (query.offset ?? 0) + (query.limit ?? defaultListLimit))
      }),

    claim: (target, options) =>
      updateIf(
        target.runId,
        (row, at) =>
          inProgress(row) && row.step === target.step && row.nextRunAt <= at &&
          (row.lockedUntil === null || row.lockedUntil <= at),
        (row, at) => ({
          // A lease never released is a run that ended without an outcome: count it.
          stepLostCount: row.stepLostCount + (row.lockedBy !== null ? 1 : 0),
          lockedBy: options.owner,
          lockedUntil: plus(at, options.leaseFor),
          leaseToken: randomUUID()
        })
      ),

    extendLease: (lease, leaseFor) =>
      Effect.flatMap(
        updateIf(lease.runId, holds(lease), (row, at) => ({ lockedUntil: plus(at, leaseFor), updatedAt: row.updatedAt })),
        Option.match({
          onSome: () => Effect.succeed("held" as const),
          onNone: () =>
            Effect.map(find(lease.runId), (row) =>
              Option.isSome(row) && row.value.erroredAt !== null && row.value.step === lease.step
                ? "cancelled" as const
                : "lost" as const)
        })
      ),

    writeJobData: (lease, jobName, value) =>
      updateIf(lease.runId, holds(lease), (row) => ({ jobData: { ...row.jobData, [jobName]: jsonCopy(value) } })).pipe(
        Effect.map(Option.isSome)
      ),

    advance: (lease, { finished }) =>
      updateIf(
        lease.runId,
        holds(lease),
        (row, at) =>
          finished
            ? { ...released, finishedAt: at, stepRetryCount: 0, stepLostCount: 0 }
            : { ...released, step: row.step + 1, stepRetryCount: 0, stepLostCount: 0, nextRunAt: at }
      ).pipe(Effect.map(Option.isSome)),

    advanceAndClaim: (lease, options) =>
      updateIf(lease.runId, holds(lease), (row, at) => ({
        step: row.step + 1,
        stepRetryCount: 0,
        stepLostCount: 0,
        nextRunAt: at,
        lockedBy: options.owner,
        lockedUntil: plus(at, options.leaseFor),
        leaseToken: options.nextToken
      })),

    scheduleRetry: (lease, options) =>
      updateIf(lease.runId, holds(lease), (row, at) => ({
        ...released,
        errorMessage: storableText(options.errorMessage),
        stepRetryCount: row.stepRetryCount + (options.countAttempt ? 1 : 0),
        nextRunAt: plus(at, options.delay)
      })).pipe(Effect.map(Option.isSome)),

    fail: (lease, errorMessage) =>
      updateIf(lease.runId, holds(lease), (_, at) => ({
        ...released,
        erroredAt: at,
        errorMessage: storableText(errorMessage)
      })).pipe(
        Effect.map(Option.isSome)
      ),

    release: (lease) =>
      updateIf(
        lease.runId,
        (row) => row.step === lease.step && row.leaseToken === lease.token && row.lockedBy !== null,
        () => released
      ).pipe(Effect.asVoid),

    recoverExpired: (limit) =>
      Effect.flatMap(now, (at) =>
        Ref.modify(rows, (map) => {
          const expired = Array.from(map.values())
            .filter((row) => inProgress(row) && row.lockedBy !== null && row.lockedUntil !== null && row.lockedUntil <= at)
            .slice(0, limit)
          for (const row of expired) map.set(row.runId, { ...row, lockedUntil: null, updatedAt: at })
          return [expired.map((row) => ({ runId: row.runId, step: row.step })), map]
        })),

    cancel: (runId, reason) =>
      updateIf(runId, inProgress, (_, at) => ({ erroredAt: at, errorMessage: storableText(reason) })).pipe(
        Effect.flatMap(Option.match({
          onSome: Effect.succeed,
          onNone: () => refuse(runId, (row) => `program is already ${status(row)}`)
        }))
      ),

    resume: (runId) =>
      updateIf(runId, (row) => row.erroredAt !== null && row.finishedAt === null, (row, at) => ({
        // A live lease is left alone: its run goes on, or sees the cancel, under its own token.
        ...(row.lockedUntil !== null && row.lockedUntil > at ? {} : released),
        erroredAt: null,
        errorMessage: null,
        stepRetryCount: 0,
        stepLostCount: 0,
        nextRunAt: at
      })).pipe(
        Effect.flatMap(Option.match({
          onSome: Effect.succeed,
          onNone: () => refuse(runId, (row) => `only an errored program can be resumed; this one is ${status(row)}`)
        }))
      ),

    findStale: ({ idleFor, limit, queueHead }) =>
      Effect.flatMap(now, (at) =>
        Ref.modify(rows, (map) => {
          const idleSince = Math.min(at.getTime(), queueHead?.getTime() ?? Infinity) - Duration.toMillis(idleFor)
          const stale = Array.from(map.values())
            .filter((row) =>
              inProgress(row) && (row.lockedUntil === null || row.lockedUntil <= at) &&
              row.nextRunAt.getTime() <= idleSince && row.updatedAt.getTime() <= idleSince &&
              // Back-off: untouched for at least as long as it had waited when last touched.
              2 * row.updatedAt.getTime() - row.nextRunAt.getTime() <= at.getTime()
            )
            .sort((a, b) => a.nextRunAt.getTime() - b.nextRunAt.getTime())
            .slice(0, limit)
          for (const row of stale) map.set(row.runId, { ...row, updatedAt: at })
          return [stale.map((row) => ({ runId: row.runId, step: row.step })), map]
        })),

    stats: Effect.flatMap(now, (at) =>
      Effect.map(Ref.get(rows), (map) => {
        let inProgressCount = 0
        let errored = 0
        let oldestDue: number | undefined
        for (const row of map.values()) {
          if (row.erroredAt !== null) errored++
          if (!inProgress(row)) continue
          inProgressCount++
          const leased = row.lockedUntil !== null && row.lockedUntil > at
          const due = row.nextRunAt.getTime()
          if (!leased && due <= at.getTime() && (oldestDue === undefined || due < oldestDue)) oldestDue = due
        }
        return {
          inProgress: inProgressCount,
          errored,
          oldestDueAge: oldestDue === undefined ? Option.none() : Option.some(Duration.millis(at.getTime() - oldestDue))
        }
      }))
  }

  /** Explains why a conditional update did not apply: no such program, or the wrong state for it. */
  const refuse = (
    runId: string,
    explain: (row: ProgramRecord) => string
  ): Effect.Effect<never, ProgramNotFoundError | ProgramStateError> =>
    Effect.flatMap(find(runId), (row) =>
      Effect.fail(
        Option.isNone(row)
          ? new ProgramNotFoundError({ runId })
          : new ProgramStateError({ runId, message: explain(row.value) })
      ))

  return service
})
