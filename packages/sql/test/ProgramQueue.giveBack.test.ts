/**
 * The SQL queue claims the rows it delivers; a nack gives the row back (`releaseAll`). A worker whose lease expired
 * while it held a delivery may nack it late, after another worker claimed the step under a token of its own: the give
 * back must leave that claim alone (seen failing with the token check removed from `releaseAll`).
 */
import { describe, expect, it } from "@effect/vitest"
import { ProgramQueue, ProgramRepository } from "@program-executor/core"
import { Duration, Effect, type Layer, Option, Schedule } from "effect"
import { randomUUID } from "node:crypto"
import { describeWithService } from "../../core/test/utils/services.js"
import { uniqueNamespace } from "../../core/test/conformance/ProgramQueueConformance.js"
import { storage } from "./utils.js"

const giveBackSuite = (name: string, makeLayer: (namespace: string) => Layer.Layer<ProgramQueue | ProgramRepository, unknown>) =>
  describe(`sql queue give-back: ${name}`, () => {
    it.live("a late nack of a delivery whose lease expired leaves the step to the worker that claimed it since", () =>
      Effect.gen(function*() {
        const repository = yield* ProgramRepository
        const queue = yield* ProgramQueue
        const runId = randomUUID()
        yield* repository.insert({ runId, jobs: ["only"], programData: {}, jobData: {} })
        const subscription = yield* queue.subscribe({
          prefetch: 1,
          claim: { owner: "slow", leaseFor: Duration.millis(300) }
        })
        yield* queue.publish({ runId, step: 0 })
        const late = yield* subscription.take.pipe(Effect.timeout("10 seconds"))
        const first = Option.getOrThrow(late.claimed)
        expect(first.lockedBy).toBe("slow")
        // The slow worker's lease runs out; another worker claims the step under its own token.
        const second = yield* repository.claim({ runId, step: 0 }, { owner: "fast", leaseFor: Duration.minutes(1) }).pipe(
          Effect.flatMap(Option.match({ onNone: () => Effect.fail("still leased"), onSome: Effect.succeed })),
          Effect.retry(Schedule.spaced("50 millis")),
          Effect.timeout("10 seconds")
        )
        expect(second.leaseToken).not.toBe(first.leaseToken)
        yield* subscription.stop
        yield* late.nack
        expect(Option.getOrThrow(yield* repository.get(runId))).toMatchObject({
          lockedBy: "fast",
          leaseToken: second.leaseToken
        })
        expect(yield* repository.advance({ runId, step: 0, token: second.leaseToken! }, { finished: true })).toBe(true)
      }).pipe(Effect.scoped, Effect.provide(makeLayer(uniqueNamespace("gb"))), Effect.timeout("50 seconds")), {
      timeout: 60_000
    })
  })

giveBackSuite("sqlite", storage("sqlite"))
describeWithService("DATABASE_URL", "PostgreSQL", (url) => giveBackSuite("pg", storage("pg", url)))
describeWithService("MYSQL_URL", "MariaDB", (url) => giveBackSuite("mysql", storage("mysql", url)))
