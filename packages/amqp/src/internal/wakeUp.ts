import { Program } from "@program-executor/core"

/**
 * The wake-up in `text` when it is a JSON object whose `runId` and `step` could name a step of a program (see
 * `Program.isValidWakeUp`), else `undefined`. Accepts nothing `Schema.parseJson(Program.WakeUp)` rejects and returns what it would (only
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
  return Program.isValidWakeUp(runId, step) ? { runId: runId as string, step: step as number } : undefined
}
