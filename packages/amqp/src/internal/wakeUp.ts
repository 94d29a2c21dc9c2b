import { Program } from "@program-executor/core"

/**
 * The wake-up in `text` when it is a JSON object whose `runId` and `step` could name a step of a program (see
 * `Program.isValidWakeUp`), else `undefined`. Accepts nothing `Schema.parseJson(Program.WakeUp)` rejects and returns
 * what it would (only `runId`, `step` and a valid `traceparent`), without its cost; the callers leave everything else
 * to the schema.
 */
export const parseWakeUp = (text: string): Program.WakeUp | undefined => {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    return undefined
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined
  const { runId, step, traceparent } = value as {
    readonly runId?: unknown
    readonly step?: unknown
    readonly traceparent?: unknown
  }
  if (!Program.isValidWakeUp(runId, step)) return undefined
  // A trace context that is not a `traceparent` is dropped, as the schema drops it: the step still runs.
  return Program.isTraceparent(traceparent)
    ? { runId: runId as string, step: step as number, traceparent }
    : { runId: runId as string, step: step as number }
}

/** The body of a wake-up: its `traceparent` only when it has one (none is added when nothing is traced). */
export const encodeWakeUp = (message: Program.WakeUp): Buffer =>
  Buffer.from(JSON.stringify(
    message.traceparent === undefined
      ? { runId: message.runId, step: message.step }
      : { runId: message.runId, step: message.step, traceparent: message.traceparent }
  ))
