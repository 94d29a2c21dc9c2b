// `stats` of the memory repository (the SQL one is checked through /metrics in packages/http/test/Metrics.test.ts).
import { describe, expect, it } from "@effect/vitest"
import { ProgramRepository } from "@program-executor/core"
import { Duration, Effect, Option, TestClock } from "effect"

describe("memory ProgramRepository.stats", () => {
  it.effect("counts programs in progress and errored, and the age of the oldest due, unleased step", () =>
    Effect.gen(function*() {
      const repository = yield* ProgramRepository
      const empty = yield* repository.stats!
      expect(empty).toEqual({ inProgress: 0, errored: 0, oldestDueAge: Option.none() })
      yield* TestClock.adjust("1 hour")
      const program = (runId: string, startAt?: Date) => ({
        runId,
        jobs: ["a"],
        programData: {},
        jobData: {},
        ...(startAt === undefined ? {} : { startAt })
      })
      yield* repository.insertMany([
        program("old", new Date(0)),
        program("now"),
        program("later", new Date(Duration.toMillis("2 hours"))),
        program("cancelled", new Date(0))
      ])
      yield* repository.cancel("cancelled", "stop")
      const stats = yield* repository.stats!
      expect(stats.inProgress).toBe(3)
      expect(stats.errored).toBe(1)
      // "old" has been due since time 0: an hour (the cancelled one and the one due later do not count).
      expect(Option.map(stats.oldestDueAge, Duration.toMillis)).toEqual(Option.some(Duration.toMillis("1 hour")))
    }).pipe(Effect.provide(ProgramRepository.layerMemory)))
})
