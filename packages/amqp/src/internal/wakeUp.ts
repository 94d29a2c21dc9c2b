import type { Program } from "@program-executor/core"

/**
 * The wake-up in `text` when it is a JSON object whose `runId` is a string and `step` a non-negative safe integer,
 * else `undefined`. Accepts nothing `Schema.parseJson(Program.WakeUp)` rejects and returns what it would (only
 * `runId` and `step`), without its cost; the callers leave everything else to the schema.
 */
export const parseWakeUp = (text: string): Program.WakeUp | undefined => {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    return undefined
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined
  const { runId, step } = value as { readonly runId?: unknown; readonly step?: unknown }
  return typeof runId === "string" && typeof step === "number" && Number.isSafeInteger(step) && step >= 0
    ? { runId, step }
    : undefined
}
