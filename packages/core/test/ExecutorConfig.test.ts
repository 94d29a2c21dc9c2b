import { describe, expect, it } from "@effect/vitest"
import { ExecutorConfig } from "@program-executor/core"
import { ConfigProvider, Duration, Effect, Layer, Option } from "effect"

const problemsOf = (layer: Layer.Layer<ExecutorConfig.ExecutorConfig, unknown>) =>
  Effect.flip(Layer.build(layer).pipe(Effect.scoped)).pipe(Effect.map(String))

describe("ExecutorConfig.validate", () => {
  it.effect("lists every problem at once: zero or negative durations, heartbeat not under the lease, bad sizes", () =>
    Effect.gen(function*() {
      const message = yield* problemsOf(ExecutorConfig.layer({
        concurrency: 0,
        sweepBatchSize: 2.5,
        maxAttempts: 0,
        maxLostRuns: -1,
        leaseDuration: Duration.zero,
        heartbeatInterval: Duration.millis(-5),
        sweepInterval: Duration.zero,
        staleAfter: Duration.zero,
        recoveryInterval: Duration.zero,
        jobTimeout: Option.some(Duration.zero)
      }))
      for (
        const problem of [
          "concurrency must be an integer >= 1",
          "sweepBatchSize must be an integer >= 1 (got 2.5)",
          "maxAttempts must be an integer >= 1",
          "maxLostRuns must be an integer >= 0",
          "leaseDuration must be a positive duration",
          "heartbeatInterval must be a positive duration",
          "sweepInterval must be a positive duration",
          "staleAfter must be a positive duration",
          "recoveryInterval must be a positive duration",
          "jobTimeout must be a positive duration"
        ]
      ) expect(message).toContain(problem)
    }))

  it.effect("a heartbeat as long as the lease, a negative shutdownGrace or concurrency from a JavaScript caller", () =>
    Effect.gen(function*() {
      const message = yield* problemsOf(ExecutorConfig.layer({
        heartbeatInterval: Duration.seconds(30),
        leaseDuration: Duration.seconds(30),
        concurrency: -3,
        shutdownGrace: -1 as unknown as Duration.Duration,
        jobTimeout: Option.some(-10 as unknown as Duration.Duration)
      }))
      expect(message).toContain("heartbeatInterval must be shorter than leaseDuration (got 30s and 30s)")
      expect(message).toContain("concurrency must be an integer >= 1 (got -3)")
      expect(message).toContain("shutdownGrace must be a non-negative duration (got -1)")
      expect(message).toContain("jobTimeout must be a positive duration (got -10)")
    }))

  it.effect("PE_* variables are checked the same way", () =>
    Effect.gen(function*() {
      const message = yield* problemsOf(ExecutorConfig.layerFromEnv().pipe(
        Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(
          new Map([["PE_LEASE_DURATION", "0 seconds"], ["PE_CONCURRENCY", "0"], ["PE_STALE_AFTER", "0 millis"]])
        )))
      ))
      expect(message).toContain("leaseDuration must be a positive duration")
      expect(message).toContain("concurrency must be an integer >= 1")
      expect(message).toContain("staleAfter must be a positive duration")
    }))

  it.effect("the defaults, and durations given as numbers of milliseconds, are accepted", () =>
    Effect.gen(function*() {
      const config = yield* ExecutorConfig.ExecutorConfig.pipe(
        Effect.provide(ExecutorConfig.layer({ leaseDuration: 20_000 as unknown as Duration.Duration, shutdownGrace: Duration.zero }))
      )
      expect(Duration.toMillis(config.leaseDuration)).toBe(20_000)
    }))
})
