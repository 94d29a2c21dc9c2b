/**
 * The memory repository's guards at their exact boundaries, on the `TestClock`: the conformance suite runs on the
 * live clock (a database's clock cannot be driven), so it cannot tell `<` from `<=`. Each test here is named after
 * the guard it pins and was seen failing with that guard mutated (Stryker, `pnpm test:mutation`).
 */
import { describe, expect, it } from "@effect/vitest"
import { type Lease, type ProgramRecord, ProgramRepository } from "@program-executor/core"
import { Duration, Effect, Option, TestClock } from "effect"
import { randomUUID } from "node:crypto"

const owner = "worker-a"
const other = "worker-b"

const insert = Effect.flatMap(ProgramRepository, (repository) =>
  repository.insert({ runId: randomUUID(), jobs: ["first", "second"], programData: {}, jobData: {} }))

const get = (runId: string) =>
  Effect.flatMap(ProgramRepository, (repository) => repository.get(runId)).pipe(Effect.map(Option.getOrThrow))

const claim = (program: { readonly runId: string; readonly step: number }, by = owner, leaseFor = Duration.millis(1000)) =>
  Effect.flatMap(ProgramRepository, (repository) =>
    repository.claim({ runId: program.runId, step: program.step }, { owner: by, leaseFor }))

const leaseOf = (row: Option.Option<ProgramRecord>): Lease => {
  const program = Option.getOrThrow(row)
  return { runId: program.runId, step: program.step, token: program.leaseToken ?? "" }
}

const at = (millis: number) => TestClock.setTime(millis)

describe("memory repository guards at their boundaries (TestClock)", () => {
  it.effect("claim: due at exactly next_run_at, not a millisecond before", () =>
    Effect.gen(function*() {
      const repository = yield* ProgramRepository
      const program = yield* insert
      const lease = leaseOf(yield* claim(program))
      yield* repository.scheduleRetry(lease, { errorMessage: "x", delay: Duration.millis(500), countAttempt: true })
      yield* at(499)
      expect(Option.isNone(yield* claim(program))).toBe(true)
      yield* at(500)
      expect(Option.isSome(yield* claim(program))).toBe(true)
    }).pipe(Effect.provide(ProgramRepository.layerMemory)))

  it.effect("lease (holds): held until a millisecond before locked_until; at locked_until it is expired and claimable", () =>
    Effect.gen(function*() {
      const repository = yield* ProgramRepository
      const program = yield* insert
      const lease = leaseOf(yield* claim(program))
      yield* at(999)
      expect(yield* repository.writeJobData(lease, "first", { n: 1 })).toBe(true)
      expect(Option.isNone(yield* claim(program, other))).toBe(true)
      yield* at(1000)
      expect(yield* repository.writeJobData(lease, "first", { n: 2 })).toBe(false)
      expect(yield* repository.advance(lease, { finished: false })).toBe(false)
      expect(yield* repository.extendLease(lease, Duration.millis(1000))).toBe("lost")
      const taken = yield* claim(program, other)
      expect(Option.getOrThrow(taken)).toMatchObject({ lockedBy: other, stepLostCount: 1 })
      expect(yield* get(program.runId)).toMatchObject({ jobData: { first: { n: 1 } } })
    }).pipe(Effect.provide(ProgramRepository.layerMemory)))

  it.effect("heartbeat (extendLease): extends from now, leaves updated_at alone; cancelled only at the lease's own step", () =>
    Effect.gen(function*() {
      const repository = yield* ProgramRepository
      const program = yield* insert
      const lease = leaseOf(yield* claim(program))
      yield* at(800)
      expect(yield* repository.extendLease(lease, Duration.millis(1000))).toBe("held")
      expect((yield* get(program.runId)).updatedAt.getTime()).toBe(0)
      expect((yield* get(program.runId)).lockedUntil?.getTime()).toBe(1800)
      // The lease expires, another worker claims step 0, advances it, and the program is cancelled at step 1: the
      // first lease was lost, not cancelled.
      yield* at(1800)
      const second = leaseOf(yield* claim(program, other))
      expect(yield* repository.advance(second, { finished: false })).toBe(true)
      yield* repository.cancel(program.runId, "by user")
      expect(yield* repository.extendLease(lease, Duration.millis(1000))).toBe("lost")
    }).pipe(Effect.provide(ProgramRepository.layerMemory)))

  it.effect("release: only the lease's own token gives the step back", () =>
    Effect.gen(function*() {
      const repository = yield* ProgramRepository
      const program = yield* insert
      const lease = leaseOf(yield* claim(program))
      yield* repository.release({ ...lease, token: "another claim's token" })
      yield* repository.release({ ...lease, step: 1 })
      expect(yield* get(program.runId)).toMatchObject({ lockedBy: owner })
      yield* repository.release(lease)
      expect(yield* get(program.runId)).toMatchObject({ lockedBy: null, lockedUntil: null })
      // Released, not lost: the next claim counts nothing.
      expect(Option.getOrThrow(yield* claim(program, other)).stepLostCount).toBe(0)
    }).pipe(Effect.provide(ProgramRepository.layerMemory)))

  it.effect("recoverExpired: a lease is expired at exactly locked_until; at most `limit` steps per call", () =>
    Effect.gen(function*() {
      const repository = yield* ProgramRepository
      const first = yield* insert
      const second = yield* insert
      yield* claim(first)
      yield* claim(second)
      yield* at(999)
      expect(yield* repository.recoverExpired(10)).toEqual([])
      yield* at(1000)
      const one = yield* repository.recoverExpired(1)
      expect(one).toHaveLength(1)
      const rest = yield* repository.recoverExpired(10)
      expect([...one, ...rest].map((w) => w.runId).sort()).toEqual([first.runId, second.runId].sort())
      expect(yield* repository.recoverExpired(10)).toEqual([])
    }).pipe(Effect.provide(ProgramRepository.layerMemory)))

  it.effect("findStale: idle for exactly idleFor is stale; the back-off doubles the wait, to the millisecond", () =>
    Effect.gen(function*() {
      const repository = yield* ProgramRepository
      const program = yield* insert
      const idle = { idleFor: Duration.millis(500), limit: 10 }
      yield* at(499)
      expect(yield* repository.findStale(idle)).toEqual([])
      yield* at(500)
      expect(yield* repository.findStale(idle)).toEqual([{ runId: program.runId, step: 0 }])
      // Touched at 500 after waiting 500: not again before 1000.
      yield* at(999)
      expect(yield* repository.findStale(idle)).toEqual([])
      yield* at(1000)
      expect(yield* repository.findStale(idle)).toEqual([{ runId: program.runId, step: 0 }])
    }).pipe(Effect.provide(ProgramRepository.layerMemory)))

  it.effect("findStale: a leased step is not stale until its lease expires; the queue head holds back what is behind it", () =>
    Effect.gen(function*() {
      const repository = yield* ProgramRepository
      const program = yield* insert
      const idle = { idleFor: Duration.millis(500), limit: 10 }
      yield* claim(program, owner, Duration.millis(5000))
      yield* at(4999)
      expect(yield* repository.findStale(idle)).toEqual([])
      yield* at(5000)
      expect(yield* repository.findStale({ ...idle, queueHead: new Date(499) })).toEqual([])
      expect(yield* repository.findStale({ ...idle, queueHead: new Date(500) })).toEqual([{ runId: program.runId, step: 0 }])
    }).pipe(Effect.provide(ProgramRepository.layerMemory)))

  it.effect("findStale: the longest-waiting steps first, at most `limit`", () =>
    Effect.gen(function*() {
      const repository = yield* ProgramRepository
      // Inserted first (listed first), but due later: its first run was retried for 100 ms.
      const late = yield* insert
      const early = yield* insert
      yield* repository.scheduleRetry(leaseOf(yield* claim(late)), {
        errorMessage: "x",
        delay: Duration.millis(100),
        countAttempt: true
      })
      yield* at(1000)
      expect(yield* repository.findStale({ idleFor: Duration.millis(500), limit: 1 })).toEqual([{ runId: early.runId, step: 0 }])
      expect(yield* repository.findStale({ idleFor: Duration.millis(500), limit: 1 })).toEqual([{ runId: late.runId, step: 0 }])
    }).pipe(Effect.provide(ProgramRepository.layerMemory)))

  it.effect("resume: a lease live until a millisecond later is kept; one expiring now is cleared", () =>
    Effect.gen(function*() {
      const repository = yield* ProgramRepository
      const live = yield* insert
      const expiring = yield* insert
      yield* claim(live, owner, Duration.millis(1001))
      yield* claim(expiring, owner, Duration.millis(1000))
      yield* repository.cancel(live.runId, "by user")
      yield* repository.cancel(expiring.runId, "by user")
      yield* at(1000)
      expect(yield* repository.resume(live.runId)).toMatchObject({ lockedBy: owner })
      expect(yield* repository.resume(expiring.runId)).toMatchObject({ lockedBy: null, lockedUntil: null })
    }).pipe(Effect.provide(ProgramRepository.layerMemory)))

  it.effect("recoverExpired: only steps in progress; a program cancelled while leased is not re-published", () =>
    Effect.gen(function*() {
      const repository = yield* ProgramRepository
      const cancelled = yield* insert
      const unleased = yield* insert
      yield* claim(cancelled)
      yield* repository.cancel(cancelled.runId, "by user")
      yield* at(1000)
      expect(yield* repository.recoverExpired(10)).toEqual([])
      expect((yield* get(unleased.runId)).lockedBy).toBeNull()
    }).pipe(Effect.provide(ProgramRepository.layerMemory)))

  it.effect("release: a lease already given back is not released again (updated_at, the sweeper's clock, stays)", () =>
    Effect.gen(function*() {
      const repository = yield* ProgramRepository
      const program = yield* insert
      const lease = leaseOf(yield* claim(program))
      yield* at(100)
      yield* repository.release(lease)
      yield* at(200)
      yield* repository.release(lease)
      expect((yield* get(program.runId)).updatedAt.getTime()).toBe(100)
    }).pipe(Effect.provide(ProgramRepository.layerMemory)))

  it.effect("findStale: a step touched less than idleFor ago is not stale, however long it has been due", () =>
    Effect.gen(function*() {
      const repository = yield* ProgramRepository
      const program = yield* insert
      yield* at(200)
      yield* claim(program, owner, Duration.millis(10))
      yield* at(1000)
      expect(yield* repository.findStale({ idleFor: Duration.millis(900), limit: 10 })).toEqual([])
      yield* at(1100)
      expect(yield* repository.findStale({ idleFor: Duration.millis(900), limit: 10 })).toEqual([
        { runId: program.runId, step: 0 }
      ])
    }).pipe(Effect.provide(ProgramRepository.layerMemory)))
})
