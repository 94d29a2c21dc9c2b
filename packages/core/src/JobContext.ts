/**
 * What a running job can see and do: which step of which program it is, the program's data, and its own
 * resumable progress (job data), persisted at once so a retry or another worker continues from it.
 */
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import type * as Effect from "effect/Effect"
import type { ExecutionTimeExceededError, FatalError, RetryableError } from "./JobError.js"

export interface JobDataHandle<D> {
  /** This job's data; `{}` when nothing was stored yet. */
  readonly get: Effect.Effect<D>
  /**
   * Replaces this job's data. Stored before the call returns. Fails as retryable when it cannot be stored now (the
   * database unreachable, the lease lost, the run over), as fatal when the database refuses the value itself.
   */
  readonly set: (value: D) => Effect.Effect<void, RetryableError | FatalError>
  /** Shallow merge (later keys win), as the old library's `merge`. Stored before the call returns. */
  readonly merge: (partial: Partial<D>) => Effect.Effect<void, RetryableError | FatalError>
}

export interface CheckpointOptions {
  /** Budget for one run of the job, counted from its start. */
  readonly maxExecutionTime: Duration.DurationInput
}

export interface JobContextShape<P = Record<string, any>, D = Record<string, any>> {
  readonly runId: string
  /** Index of this job in the program. */
  readonly step: number
  readonly jobName: string
  readonly jobs: ReadonlyArray<string>
  /**
   * 1 on the first run of this step, then one more for each run that did not complete: counted retries and runs lost
   * without an outcome (a worker that died). A checkpoint past its budget does not count (the old library's way).
   */
  readonly attempt: number
  readonly programData: P
  readonly jobData: JobDataHandle<D>
  /**
   * Stores progress, then fails with `ExecutionTimeExceededError` if the job has run longer than the budget: the
   * step is retried (not counted as an attempt) and resumes from the stored progress.
   */
  readonly checkpoint: (
    partial: Partial<D>,
    options: CheckpointOptions
  ) => Effect.Effect<void, RetryableError | FatalError | ExecutionTimeExceededError>
}

export class JobContext extends Context.Tag("@program-executor/core/JobContext")<JobContext, JobContextShape>() {}
