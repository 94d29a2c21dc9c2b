import * as Cause from "effect/Cause"
import * as Option from "effect/Option"
import * as Predicate from "effect/Predicate"
import type { JobError } from "../JobError.js"
import { ExecutionTimeExceededError, FatalError, IgnorableError, RetryableError } from "../JobError.js"

/** What the executor does with a failed run of a job. */
export type Failure =
  | { readonly _tag: "Retry"; readonly message: string; readonly countAttempt: boolean }
  | { readonly _tag: "Ignore"; readonly message: string }
  | { readonly _tag: "Fatal"; readonly message: string; readonly cause: Cause.Cause<unknown> }

export const messageOf = (error: unknown): string => {
  if (Predicate.hasProperty(error, "message") && typeof error.message === "string" && error.message !== "") {
    return error.message
  }
  if (typeof error === "string") return error
  try {
    return JSON.stringify(error) ?? String(error)
  } catch {
    return String(error)
  }
}

const flag = (error: unknown, name: "retryable" | "ignorable") =>
  Predicate.hasProperty(error, name) && error[name] === true

/**
 * Turns anything thrown or failed by job code into a `JobError`. Our own errors pass through; values with the old
 * library's `retryable` / `ignorable` flags keep their meaning; anything else is fatal.
 */
export const toJobError = (error: unknown): JobError => {
  if (
    error instanceof RetryableError || error instanceof IgnorableError || error instanceof FatalError ||
    error instanceof ExecutionTimeExceededError
  ) return error
  const code = Predicate.hasProperty(error, "code") && (typeof error.code === "string" || typeof error.code === "number")
    ? { code: error.code }
    : {}
  if (flag(error, "retryable")) return new RetryableError({ message: messageOf(error), ...code, cause: error })
  if (flag(error, "ignorable")) return new IgnorableError({ message: messageOf(error), ...code, cause: error })
  return new FatalError({ message: messageOf(error), cause: error })
}

/** Classifies the cause of a failed job run. A defect (a throw, a die) is fatal unless it carries a seed flag. */
export const classify = (cause: Cause.Cause<unknown>): Failure => {
  const failure = Cause.failureOption(cause)
  const error = Option.isSome(failure)
    ? toJobError(failure.value)
    : Option.match(Cause.dieOption(cause), {
      onNone: () => new FatalError({ message: "job was interrupted" }),
      onSome: (defect) =>
        flag(defect, "retryable") || flag(defect, "ignorable")
          ? toJobError(defect)
          : new FatalError({ message: messageOf(defect), cause: defect })
    })
  switch (error._tag) {
    case "RetryableError":
      return { _tag: "Retry", message: error.message, countAttempt: true }
    case "ExecutionTimeExceededError":
      return { _tag: "Retry", message: error.message, countAttempt: false }
    case "IgnorableError":
      return { _tag: "Ignore", message: error.message }
    case "FatalError":
      return { _tag: "Fatal", message: error.message, cause }
  }
}
