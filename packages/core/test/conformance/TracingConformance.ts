/**
 * The span tree of a program under OpenTelemetry, on any storage: a `program-executor.step` span per step, parent of
 * the job's own spans, linked to the span of the step before it — in-process for a continued step, through the
 * wake-up's `traceparent` for a step that came from the queue (the first step links to `createProgram`).
 */
import { NodeSdk } from "@effect/opentelemetry"
import { describe, expect, it } from "@effect/vitest"
import {
  Executor,
  ExecutorConfig,
  Job,
  JobLibrary,
  ProgramEvents,
  ProgramExecutor,
  type ProgramQueue,
  type ProgramRepository
} from "@program-executor/core"
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { Duration, Effect, Layer } from "effect"
import { awaitProgram, fastConfig, pollUntil } from "./ExecutorConformance.js"

type Storage = ProgramRepository | ProgramQueue

const jobNames = ["a", "b", "c"]
const jobs = jobNames.map((name) => Job.make(name, Effect.withSpan(Effect.void, `job ${name}`)))

/**
 * Creates a 3-job program with OpenTelemetry installed and `workers` workers (one library, `maxConsecutiveSteps`
 * as given) running; returns its runId and the finished spans once its three step spans have ended.
 */
const runTraced = (storage: Layer.Layer<Storage, unknown>, workers: number, maxConsecutiveSteps: number) =>
  Effect.gen(function*() {
    const exporter = new InMemorySpanExporter()
    const tracing = NodeSdk.layer(() => ({
      resource: { serviceName: "program-executor-test" },
      spanProcessor: new SimpleSpanProcessor(exporter)
    }))
    const context = yield* Layer.build(
      Layer.mergeAll(storage, ProgramEvents.layer(), JobLibrary.layer(...jobs), tracing).pipe(Layer.orDie)
    )
    return yield* Effect.gen(function*() {
      for (let worker = 0; worker < workers; worker++) {
        const options: ExecutorConfig.ExecutorOptions = {
          ...ExecutorConfig.defaults(),
          ...fastConfig,
          maxConsecutiveSteps,
          workerId: `tracing-worker-${worker}`
        }
        yield* Effect.forkScoped(Executor.run.pipe(Effect.provideService(ExecutorConfig.ExecutorConfig, options)))
      }
      const executor = yield* ProgramExecutor.make
      const runId = yield* executor.createProgram({ jobs: jobNames })
      const program = yield* awaitProgram(runId)
      expect(program.finishedAt).not.toBeNull()
      // A step's span ends once its handling returns, just after the program's row says it finished.
      const spans = yield* pollUntil(
        Effect.sync(() => exporter.getFinishedSpans()),
        (spans) => stepSpans(spans, runId).length === jobNames.length
      ).pipe(Effect.timeoutFail({ duration: Duration.seconds(10), onTimeout: () => new Error("step spans missing") }))
      return { runId, spans }
    }).pipe(Effect.provide(context))
  })

const stepSpans = (spans: ReadonlyArray<ReadableSpan>, runId: string) =>
  spans.filter((span) => span.name === "program-executor.step" && span.attributes.runId === runId)
    .sort((a, b) => Number(a.attributes.step) - Number(b.attributes.step))

const spanIdOf = (span: ReadableSpan) => span.spanContext().spanId

/** The tree every storage must give; `firstLinksTo`: the span the first step links to, if any. */
const expectTree = (spans: ReadonlyArray<ReadableSpan>, runId: string, firstLinksTo: ReadableSpan | undefined) => {
  const steps = stepSpans(spans, runId)
  expect(steps.map((span) => span.attributes)).toEqual(
    jobNames.map((job, step) => ({ runId, step, job, attempt: 1 }))
  )
  steps.forEach((step, index) => {
    const job = spans.filter((span) => span.name === `job ${jobNames[index]}`)
    expect(job).toHaveLength(1)
    expect(job[0]!.parentSpanContext?.spanId).toBe(spanIdOf(step))
    // Each step its own span, not nested in the one before: a chain's steps are siblings, tied by links.
    expect(steps.map(spanIdOf)).not.toContain(step.parentSpanContext?.spanId)
    const previous = index === 0 ? firstLinksTo : steps[index - 1]!
    expect(step.links.map((link) => link.context.spanId)).toEqual(previous === undefined ? [] : [spanIdOf(previous)])
    if (previous !== undefined) expect(step.links[0]!.context.traceId).toBe(previous.spanContext().traceId)
  })
}

export const tracingConformance = (name: string, makeLayer: () => Layer.Layer<Storage, unknown>) =>
  describe(`tracing on ${name}`, () => {
    it.scopedLive("each step through the queue links to the step that published its wake-up", () =>
      Effect.gen(function*() {
        // One library for both workers (all workers on a queue share one); every step goes through the queue.
        const { runId, spans } = yield* runTraced(makeLayer(), 2, 1)
        const created = spans.filter((span) => span.name === "program-executor.createProgram")
        expect(created).toHaveLength(1)
        expectTree(spans, runId, created[0])
      }))

    it.scopedLive("a step continued on the same worker links to the step before it", () =>
      Effect.gen(function*() {
        const { runId, spans } = yield* runTraced(makeLayer(), 1, 20)
        const created = spans.filter((span) => span.name === "program-executor.createProgram")
        expectTree(spans, runId, created[0])
      }))
  })
