/**
 * Where programs are stored: the only source of truth. Every operation that moves a program is one atomic,
 * conditional write, so two workers can never both run or both advance the same step.
 */
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import type * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { makeMemoryRepository } from "./internal/memoryRepository.js"
import type {
  ListQuery,
  NewProgram,
  ProgramFilter,
  ProgramNotFoundError,
  ProgramRecord,
  ProgramStateError,
  WakeUp
} from "./Program.js"

export class RepositoryError extends Schema.TaggedError<RepositoryError>()("RepositoryError", {
  message: Schema.String,
  cause: Schema.optionalWith(Schema.Defect, { exact: true }),
  /**
   * `false` when the database refused the statement for its data (a value out of range, text it cannot store): the
   * same statement would fail the same way, so it is not retried. Absent or `true`: the connection or the server's
   * state (refused, reset, timeout, too many connections, deadlock), worth retrying.
   */
  transient: Schema.optionalWith(Schema.Boolean, { exact: true })
}) {}

/** Whether retrying the failed operation may succeed (see `RepositoryError.transient`). */
export const isTransient = (error: unknown): boolean =>
  !(typeof error === "object" && error !== null && (error as { readonly transient?: unknown }).transient === false)

/**
 * Proof that a worker holds the current step of a program: the claim's fencing token. Every write guarded by it
 * fails once the lease is lost or the step claimed again, even by the same worker.
 */
export interface Lease {
  readonly runId: string
  readonly step: number
  /** The claim's fencing token (`lease_token`), fresh at every claim. */
  readonly token: string
}

export interface ClaimOptions {
  /** Identifies the worker; written to `locked_by`. (The fencing token is made by each claim.) */
  readonly owner: string
  readonly leaseFor: Duration.Duration
}

/**
 * - `held`: the lease was extended.
 * - `cancelled`: the program was errored meanwhile (cancelled through the API or by hand in SQL).
 * - `lost`: someone else holds the step, or it moved on (the lease had expired).
 */
export type LeaseStatus = "held" | "cancelled" | "lost"

export interface RetryOptions {
  readonly errorMessage: string
  /** The step runs again no earlier than this long after now (database clock). */
  readonly delay: Duration.Duration
  /** False for a checkpoint budget overrun, which the old library did not count as an attempt. */
  readonly countAttempt: boolean
}

export interface StaleQuery {
  /** Only programs that have not moved (`updated_at`, `next_run_at`) for this long. */
  readonly idleFor: Duration.Duration
  readonly limit: number
  /**
   * The due time (`next_run_at`, database clock) of the step this worker started last, while it is draining a
   * queue: the queue's head as this worker sees it. A step due after `queueHead - idleFor` is taken to be still
   * waiting in the queue, behind that head, not lost; without it a backlog that drains slower than `idleFor` would
   * get a re-published wake-up per waiting step.
   */
  readonly queueHead?: Date
}

/** What the table holds, for gauges. */
export interface ProgramStats {
  /** Neither finished nor errored. */
  readonly inProgress: number
  readonly errored: number
  /** How long the oldest step that is due, unfinished, not errored and not leased has waited; none when no step is. */
  readonly oldestDueAge: Option.Option<Duration.Duration>
}

/** One program of `insertMany`: the stored row, and whether this call created it (false: its key existed). */
export interface InsertedProgram {
  readonly program: ProgramRecord
  readonly created: boolean
}

/** A program a bulk operation changed: its id (the batch cursor), runId and current step. */
export interface ChangedProgram {
  readonly id: number
  readonly runId: string
  readonly step: number
}

/** One batch of a bulk operation: programs with an id above `afterId`, in id order, at most `limit`. */
export interface BatchPage {
  readonly afterId: number
  readonly limit: number
}

export type PruneKind = "finished" | "errored"

export class ProgramRepository extends Context.Tag("@program-executor/core/ProgramRepository")<
  ProgramRepository,
  {
    readonly insert: (program: NewProgram) => Effect.Effect<ProgramRecord, RepositoryError>
    /**
     * Where the caller's own transaction may still hold what `insert` wrote (a SQL repository inside the
     * application's `sql.withTransaction`): registers `effect` to run once that transaction has committed, and
     * returns true; it never runs on a rollback. False when the write is already committed: run `effect` now.
     * Absent: writes are always committed when they return.
     */
    readonly afterCommit?: (effect: Effect.Effect<void>) => Effect.Effect<boolean>
    readonly get: (runId: string) => Effect.Effect<Option.Option<ProgramRecord>, RepositoryError>
    readonly list: (query: ListQuery) => Effect.Effect<ReadonlyArray<ProgramRecord>, RepositoryError>
    /**
     * Takes the lease on step `target.step` if, atomically: the program is neither finished nor errored, is at
     * that step, its lease is free or expired, and `next_run_at` is due. Writes a fresh fencing token
     * (`leaseToken`) and, when the previous run of the step never released its lease (`locked_by` still set), counts
     * it in `stepLostCount`. Returns the row as it is after the claim (so nothing re-reads it), or `None` when the
     * claim is refused (duplicate, stale, cancelled, finished, early).
     */
    readonly claim: (
      target: WakeUp,
      options: ClaimOptions
    ) => Effect.Effect<Option.Option<ProgramRecord>, RepositoryError>
    readonly extendLease: (lease: Lease, leaseFor: Duration.Duration) => Effect.Effect<LeaseStatus, RepositoryError>
    /** Replaces one job's entry of `job_data`, only while the lease is held. False when it is not. */
    readonly writeJobData: (lease: Lease, jobName: string, value: unknown) => Effect.Effect<boolean, RepositoryError>
    /**
     * Moves to `step + 1` (clearing the lease, `step_retry_count` and `step_lost_count`) or, when `finished`, sets `finished_at`.
     * Guarded by step and lease: false when the lease was lost and nothing changed.
     */
    readonly advance: (lease: Lease, options: { readonly finished: boolean }) => Effect.Effect<boolean, RepositoryError>
    /** Records a retryable failure, releases the lease and sets `next_run_at`. Guarded like `advance`. */
    readonly scheduleRetry: (lease: Lease, options: RetryOptions) => Effect.Effect<boolean, RepositoryError>
    /** Sets `errored_at` and `error_message` and releases the lease. Guarded like `advance`. */
    readonly fail: (lease: Lease, errorMessage: string) => Effect.Effect<boolean, RepositoryError>
    /** Gives the step back without recording anything (an interrupted job): it can be claimed again at once. */
    readonly release: (lease: Lease) => Effect.Effect<void, RepositoryError>
    /**
     * Steps whose lease expired without being released: their worker died or lost them mid-run. Marks each as seen
     * (`locked_until` cleared, `locked_by` kept, so the next claim still counts the lost run) and returns them, so
     * they are re-published once, at once, rather than after `staleAfter`.
     */
    readonly recoverExpired: (limit: number) => Effect.Effect<ReadonlyArray<WakeUp>, RepositoryError>
    /** Sets `errored_at` with the reason; a running job sees it at its next heartbeat. */
    readonly cancel: (
      runId: string,
      reason: string
    ) => Effect.Effect<ProgramRecord, RepositoryError | ProgramNotFoundError | ProgramStateError>
    /**
     * Clears the error of an errored program and resets its retry and lost-run counts, at the step where it failed.
     * A lease that is still live is left alone: its run goes on (or sees the cancel) under its own token.
     */
    readonly resume: (
      runId: string
    ) => Effect.Effect<ProgramRecord, RepositoryError | ProgramNotFoundError | ProgramStateError>
    /**
     * Steps that should be running but apparently are not: unfinished, not errored, unleased, due, idle for
     * `idleFor`. Marks what it returns as touched (`updated_at`) and backs off: a step returned once is returned again
     * only after it has waited twice as long as it had then (idleFor, 2×, 4×…), so a backlog that drains slower than
     * `idleFor` does not get one more message per waiting step per period.
     */
    readonly findStale: (query: StaleQuery) => Effect.Effect<ReadonlyArray<WakeUp>, RepositoryError>
    /**
     * Counts for monitoring (`/metrics`), read in one statement on the database's clock. Absent: the repository
     * cannot count cheaply, and the gauges are not exported.
     */
    readonly stats?: Effect.Effect<ProgramStats, RepositoryError>

    // Batch creation, bulk operations and retention.

    /**
     * Stores every program, all or none (one transaction), in input order. A program whose `idempotencyKey` is taken
     * (by an earlier program, or an earlier one of the same call) is not stored: the existing row is returned with
     * `created: false`. Race-safe through the key's unique index. `startAt` / `startAfter` set `next_run_at`.
     */
    readonly insertMany: (programs: ReadonlyArray<NewProgram>) => Effect.Effect<ReadonlyArray<InsertedProgram>, RepositoryError>
    /**
     * Cancels (as `cancel`) one batch of the programs matching `filter`: one guarded statement, so a program that
     * finished or errored meanwhile is left alone. Returns what it cancelled; fewer than `page.limit`: the last batch.
     */
    readonly cancelBatch: (
      filter: ProgramFilter,
      reason: string,
      page: BatchPage
    ) => Effect.Effect<ReadonlyArray<ChangedProgram>, RepositoryError>
    /** Resumes (as `resume`) one batch of the errored programs matching `filter`, guarded like `cancelBatch`. */
    readonly resumeBatch: (
      filter: ProgramFilter,
      page: BatchPage
    ) => Effect.Effect<ReadonlyArray<ChangedProgram>, RepositoryError>
    /**
     * Deletes at most `limit` programs finished (or, for `errored`, errored and not finished) before `before`; returns
     * how many. A program in progress is never deleted, whatever happens meanwhile.
     */
    readonly pruneBatch: (kind: PruneKind, before: Date, limit: number) => Effect.Effect<number, RepositoryError>
    /** How many programs `pruneBatch` would delete in all. */
    readonly countPrunable: (kind: PruneKind, before: Date) => Effect.Effect<number, RepositoryError>
  }
>() {
  /** Keeps programs in memory, with the same semantics as the SQL repository. For tests, yours and ours. */
  static readonly layerMemory: Layer.Layer<ProgramRepository> = Layer.effect(this, makeMemoryRepository)
}
