import * as Context from "effect/Context"
import * as DefaultServices from "effect/DefaultServices"
import * as Effect from "effect/Effect"
import * as Tracer from "effect/Tracer"
import type { WakeUp } from "../Program.js"

/** Effect's own tracer, installed when the application provides none. It exports nothing. */
const builtInTracer = Context.get(DefaultServices.liveServices, Tracer.Tracer)

/**
 * Whether spans go anywhere: a tracer other than Effect's built-in one is installed (OpenTelemetry, say). Spans
 * nobody exports are skipped on the hot paths: per step they cost about a tenth of the executor's CPU.
 */
export const isTraced: Effect.Effect<boolean> = Effect.map(Effect.tracer, (tracer) => tracer !== builtInTracer)

/** `Effect.withSpan`, without a captured stack, when `isTraced`; the effect as it is otherwise. */
export const withSpanIfTraced = (name: string, attributes?: Record<string, unknown>) =>
<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.flatMap(isTraced, (traced) =>
    traced
      ? Effect.withSpan(effect, name, { captureStackTrace: false, ...(attributes === undefined ? {} : { attributes }) })
      : effect)

/** A W3C `traceparent`: version 00, a trace id and a span id (lowercase hex, not all zeros), the flags. */
const traceparentPattern = /^00-(?!0{32})([0-9a-f]{32})-(?!0{16})([0-9a-f]{16})-([0-9a-f]{2})$/

/** Whether `value` is a `traceparent` a wake-up may carry. */
export const isTraceparent = (value: unknown): value is string =>
  typeof value === "string" && traceparentPattern.test(value)

/** The span in a `traceparent`, to link to; `undefined` when it is not one (a malformed context is ignored). */
export const spanOfTraceparent = (traceparent: string | undefined): Tracer.ExternalSpan | undefined => {
  if (traceparent === undefined) return undefined
  const match = traceparentPattern.exec(traceparent)
  return match === null
    ? undefined
    : Tracer.externalSpan({ traceId: match[1]!, spanId: match[2]!, sampled: (parseInt(match[3]!, 16) & 1) === 1 })
}

const traceparentOf = (span: Tracer.AnySpan): string | undefined => {
  const traceparent = `00-${span.traceId}-${span.spanId}-${span.sampled ? "01" : "00"}`
  return isTraceparent(traceparent) ? traceparent : undefined
}

/**
 * The wake-up with the `traceparent` of the current span, so that the step it wakes links to the step (or the
 * `createProgram`) that published it; the wake-up as it is when nothing is traced or no span is current.
 */
export const withTraceparent = (wakeUp: WakeUp): Effect.Effect<WakeUp> =>
  Effect.flatMap(isTraced, (traced) =>
    !traced
      ? Effect.succeed(wakeUp)
      : Effect.map(Effect.currentSpan, (span) => {
        const traceparent = traceparentOf(span)
        return traceparent === undefined ? wakeUp : { ...wakeUp, traceparent }
      }).pipe(Effect.orElseSucceed(() => wakeUp)))
