/**
 * How a job fails. The executor reads the failure to decide what happens to the program:
 *
 * - `RetryableError`: run the same job again later (delay from the retry schedule), up to the maximum attempts.
 * - `IgnorableError`: stop the program quietly (`errored_at` set, logged at info, no error event).
 * - `FatalError`: stop the program, record the error, skip the remaining jobs. A defect (a throw, a die) is fatal.
 * - `ExecutionTimeExceededError`: raised by `checkpoint` when a job ran past its budget; retried like a
 *   `RetryableError` but not counted as an attempt (the old library's behaviour).
 *
 * For code written against the old library, any failure value carrying `retryable: true` or `ignorable: true`
 * is classified the same way as the matching class.
 */
import * as Schema from "effect/Schema"

const fields = {
  message: Schema.String,
  code: Schema.optionalWith(Schema.Union(Schema.String, Schema.Number), { exact: true }),
  cause: Schema.optionalWith(Schema.Defect, { exact: true })
}

export class RetryableError extends Schema.TaggedError<RetryableError>()("RetryableError", fields) {
  /** Seed compatibility: the old library's errors were recognised by this flag. */
  get retryable(): true {
    return true
  }
}

export class IgnorableError extends Schema.TaggedError<IgnorableError>()("IgnorableError", fields) {
  get ignorable(): true {
    return true
  }
}

export class FatalError extends Schema.TaggedError<FatalError>()("FatalError", {
  message: Schema.String,
  cause: Schema.optionalWith(Schema.Defect, { exact: true })
}) {}

export class ExecutionTimeExceededError extends Schema.TaggedError<ExecutionTimeExceededError>()(
  "ExecutionTimeExceededError",
  {
    message: Schema.String,
    elapsedMillis: Schema.Number,
    budgetMillis: Schema.Number
  }
) {}

/** Every failure a job may put in its error channel. */
export type JobError = RetryableError | IgnorableError | FatalError | ExecutionTimeExceededError
