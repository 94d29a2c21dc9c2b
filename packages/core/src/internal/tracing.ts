import * as Context from "effect/Context"
import * as DefaultServices from "effect/DefaultServices"
import * as Effect from "effect/Effect"
import * as Tracer from "effect/Tracer"

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
