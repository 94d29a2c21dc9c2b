import { describe, expect, it } from "@effect/vitest"
import {
  Executor,
  ExecutorConfig,
  Job,
  JobLibrary,
  ProgramEvents,
  ProgramExecutor,
  ProgramQueue,
  ProgramRepository,
  type WakeUp
} from "@program-executor/core"
import { Effect, Layer } from "effect"
import { awaitProgram, fastConfig } from "./conformance/ExecutorConformance.js"
import { tracingConformance } from "./conformance/TracingConformance.js"

tracingConformance("memory", () => Layer.merge(ProgramRepository.layerMemory, ProgramQueue.layerMemory))

describe("tracing on memory, no tracer installed", () => {
  it.scopedLive("adds no traceparent to wake-ups, even when the caller has spans of its own", () =>
    Effect.gen(function*() {
      const published: Array<WakeUp> = []
      const recording = Layer.effect(
        ProgramQueue,
        Effect.map(ProgramQueue, (queue) => ({
          ...queue,
          publish: (message: WakeUp, options?: Parameters<ProgramQueue["Type"]["publish"]>[1]) =>
            Effect.zipRight(Effect.sync(() => published.push(message)), queue.publish(message, options))
        }))
      ).pipe(Layer.provide(ProgramQueue.layerMemory))
      const jobs = ["a", "b", "c"].map((name) => Job.make(name, Effect.withSpan(Effect.void, `job ${name}`)))
      const context = yield* Layer.build(
        Layer.mergeAll(ProgramRepository.layerMemory, recording, ProgramEvents.layer(), JobLibrary.layer(...jobs))
      )
      yield* Effect.gen(function*() {
        const options = { ...ExecutorConfig.defaults(), ...fastConfig, maxConsecutiveSteps: 1, workerId: "untraced" }
        yield* Effect.forkScoped(Executor.run.pipe(Effect.provideService(ExecutorConfig.ExecutorConfig, options)))
        const executor = yield* ProgramExecutor.make
        // Effect's built-in tracer makes this span, and exports nothing: no context worth carrying.
        const runId = yield* executor.createProgram({ jobs: ["a", "b", "c"] }).pipe(Effect.withSpan("caller"))
        expect((yield* awaitProgram(runId)).finishedAt).not.toBeNull()
      }).pipe(Effect.provide(context))
      // (A sweep on a slow machine may publish a step again: still without a traceparent.)
      expect([...new Set(published.map((message) => message.step))].sort()).toEqual([0, 1, 2])
      expect(published.filter((message) => "traceparent" in message)).toEqual([])
    }))
})
