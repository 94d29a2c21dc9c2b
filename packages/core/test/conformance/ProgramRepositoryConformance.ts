/**
 * What every `ProgramRepository` must do: each operation and each of its guards, on the live clock (a database's
 * clock cannot be driven by `TestClock`) with short leases and delays; time-dependent outcomes are polled with a bound.
 * Each test gets its own namespace (a table name for SQL) from `makeLayer`.
 *
 * SQL implementations also pass `execute`, which runs a raw statement on the namespace's table (named `{table}` in
 * the statement): a manual `UPDATE … SET errored_at = …` must cancel exactly as `cancel` does, and rows whose JSON
 * was broken by hand must be read with `corruption` set instead of failing a read.
 */
import { describe, expect, it } from "@effect/vitest"
import {
  type Lease,
  type Program,
  type ProgramRecord,
  ProgramRepository,
  type WakeUp
} from "@program-executor/core"
import { Duration, Effect, type Layer, Option } from "effect"
import { randomUUID } from "node:crypto"

export interface RepositoryConformanceOptions {
  /** Runs a raw SQL statement; `{table}` in it is replaced by the namespace's table. */
  readonly execute?: (namespace: string, statement: string) => Effect.Effect<void, unknown>
}

const lease = Duration.seconds(30)
const owner = "worker-a"
const other = "worker-b"

const repo = ProgramRepository

const insert = (program: Partial<Program.NewProgram> = {}) =>
  Effect.flatMap(repo, (repository) =>
    repository.insert({
      runId: randomUUID(),
      jobs: ["first", "second"],
      programData: { shop: 1 },
      jobData: {},
      ...program
    }))

const get = (runId: string) =>
  Effect.flatMap(repo, (repository) => repository.get(runId)).pipe(
    Effect.map(Option.getOrThrowWith(() => new Error(`program ${runId} not found`)))
  )

const claim = (target: WakeUp, by = owner, leaseFor: Duration.Duration = lease) =>
  Effect.flatMap(repo, (repository) => repository.claim(target, { owner: by, leaseFor }))

const claimed = (target: WakeUp, by = owner, leaseFor: Duration.Duration = lease) =>
  claim(target, by, leaseFor).pipe(
    Effect.map(Option.getOrThrowWith(() => new Error(`claim of ${target.runId} step ${target.step} was refused`)))
  )

const leaseOf = (program: ProgramRecord): Lease => ({
  runId: program.runId,
  step: program.step,
  token: program.leaseToken ?? ""
})

/** The same step under a token no claim made: what a run sees once the step was claimed again. */
const otherToken = "token of another claim"

/** Retries `effect` every 20 ms until `done` holds, at most `within`. */
const eventually = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  done: (value: A) => boolean,
  within: Duration.DurationInput = "10 seconds"
) => {
  const loop: Effect.Effect<A, E, R> = Effect.flatMap(effect, (value) =>
    done(value) ? Effect.succeed(value) : Effect.zipRight(Effect.sleep("20 millis"), Effect.suspend(() => loop)))
  return loop.pipe(
    Effect.timeoutFail({ duration: within, onTimeout: () => new Error(`not reached within ${Duration.format(within)}`) })
  )
}

let counter = 0
const uniqueNamespace = () =>
  `pr_${Date.now().toString(36)}_${(counter++).toString(36)}_${Math.random().toString(36).slice(2, 8)}`

export const programRepositoryConformance = (
  name: string,
  makeLayer: (namespace: string) => Layer.Layer<ProgramRepository, unknown>,
  options: RepositoryConformanceOptions = {}
) => {
  const test = (
    title: string,
    body: (namespace: string) => Effect.Effect<void, unknown, ProgramRepository>
  ) =>
    it.live(title, () => {
      const namespace = uniqueNamespace()
      return body(namespace).pipe(Effect.provide(makeLayer(namespace)), Effect.timeout("50 seconds"))
    }, { timeout: 60_000 })

  const sqlTest = (
    title: string,
    body: (
      namespace: string,
      execute: (statement: string) => Effect.Effect<void, unknown>
    ) => Effect.Effect<void, unknown, ProgramRepository>
  ) => {
    const execute = options.execute
    if (execute === undefined) return it.skip(`${title} (SQL only)`, () => {})
    return test(title, (namespace) =>
      body(namespace, (statement) => execute(namespace, statement.replaceAll("{table}", namespace))))
  }

  describe(`ProgramRepository conformance: ${name}`, () => {
    test("insert stores a new program at step 0, due now, unleased; get reads it back", () =>
      Effect.gen(function*() {
        const program = yield* insert({ jobData: { first: { page: 2 } }, programData: { shop: 7, nested: [1, "x"] } })
        expect(program.step).toBe(0)
        expect(program.stepRetryCount).toBe(0)
        expect(program.jobs).toEqual(["first", "second"])
        expect(program.programData).toEqual({ shop: 7, nested: [1, "x"] })
        expect(program.jobData).toEqual({ first: { page: 2 } })
        expect(program.finishedAt).toBeNull()
        expect(program.erroredAt).toBeNull()
        expect(program.errorMessage).toBeNull()
        expect(program.lockedBy).toBeNull()
        expect(program.lockedUntil).toBeNull()
        expect(program.corruption).toBeNull()
        expect(program.createdAt).toBeInstanceOf(Date)
        expect(program.nextRunAt.getTime()).toBeLessThanOrEqual(Date.now() + 5_000)
        const read = yield* get(program.runId)
        expect(read).toEqual(program)
        const second = yield* insert()
        expect(second.id).toBeGreaterThan(program.id)
        const missing = yield* Effect.flatMap(repo, (repository) => repository.get(randomUUID()))
        expect(Option.isNone(missing)).toBe(true)
      }))

    test("claim takes the lease once and returns the row as claimed; a second claim is refused", () =>
      Effect.gen(function*() {
        const program = yield* insert()
        const row = yield* claimed({ runId: program.runId, step: 0 })
        expect(row.runId).toBe(program.runId)
        expect(row.lockedBy).toBe(owner)
        expect(row.lockedUntil!.getTime()).toBeGreaterThan(Date.now() + 20_000)
        expect(yield* get(program.runId)).toMatchObject({ lockedBy: owner })
        expect(Option.isNone(yield* claim({ runId: program.runId, step: 0 }, other))).toBe(true)
        // The same owner may not claim a step it already holds either (a duplicate wake-up).
        expect(Option.isNone(yield* claim({ runId: program.runId, step: 0 }, owner))).toBe(true)
      }))

    test("claim is refused for the wrong step, an unknown program, a finished or an errored one", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const program = yield* insert({ jobs: ["only"] })
        expect(Option.isNone(yield* claim({ runId: program.runId, step: 1 }))).toBe(true)
        expect(Option.isNone(yield* claim({ runId: randomUUID(), step: 0 }))).toBe(true)
        const row = yield* claimed({ runId: program.runId, step: 0 })
        expect(yield* repository.advance(leaseOf(row), { finished: true })).toBe(true)
        expect(Option.isNone(yield* claim({ runId: program.runId, step: 0 }))).toBe(true)

        const cancelled = yield* insert()
        yield* repository.cancel(cancelled.runId, "stop")
        expect(Option.isNone(yield* claim({ runId: cancelled.runId, step: 0 }))).toBe(true)

        const failed = yield* insert()
        const failedRow = yield* claimed({ runId: failed.runId, step: 0 })
        expect(yield* repository.fail(leaseOf(failedRow), "boom")).toBe(true)
        expect(Option.isNone(yield* claim({ runId: failed.runId, step: 0 }))).toBe(true)
      }))

    test("claim is refused until next_run_at is due", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const program = yield* insert()
        const row = yield* claimed({ runId: program.runId, step: 0 })
        expect(
          yield* repository.scheduleRetry(leaseOf(row), {
            errorMessage: "later",
            delay: Duration.millis(600),
            countAttempt: true
          })
        ).toBe(true)
        expect(Option.isNone(yield* claim({ runId: program.runId, step: 0 }))).toBe(true)
        const again = yield* eventually(claim({ runId: program.runId, step: 0 }), Option.isSome)
        expect(Option.getOrThrow(again).stepRetryCount).toBe(1)
      }))

    test("an expired lease lets another owner claim; the first owner's guarded writes then fail", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const program = yield* insert({ jobData: { first: { kept: true } } })
        const first = yield* claimed({ runId: program.runId, step: 0 }, owner, Duration.millis(300))
        expect(Option.isNone(yield* claim({ runId: program.runId, step: 0 }, other))).toBe(true)
        const second = yield* eventually(claim({ runId: program.runId, step: 0 }, other), Option.isSome)
        expect(Option.getOrThrow(second).lockedBy).toBe(other)
        const stale = leaseOf(first)
        expect(yield* repository.extendLease(stale, lease)).toBe("lost")
        expect(yield* repository.writeJobData(stale, "first", { overwritten: true })).toBe(false)
        expect(yield* repository.advance(stale, { finished: false })).toBe(false)
        expect(yield* repository.scheduleRetry(stale, { errorMessage: "x", delay: Duration.zero, countAttempt: true }))
          .toBe(false)
        expect(yield* repository.fail(stale, "x")).toBe(false)
        yield* repository.release(stale)
        const after = yield* get(program.runId)
        expect(after).toMatchObject({ step: 0, lockedBy: other, erroredAt: null, stepRetryCount: 0 })
        expect(after.jobData).toEqual({ first: { kept: true } })
      }))

    test("a lease that expired without anyone else claiming still refuses the old owner's writes", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const program = yield* insert()
        const row = yield* claimed({ runId: program.runId, step: 0 }, owner, Duration.millis(200))
        yield* eventually(claim({ runId: program.runId, step: 0 }, other, Duration.millis(1)), Option.isSome)
        // The other owner's 1 ms lease is over too: nobody holds the step.
        yield* eventually(get(program.runId), (p) => p.lockedUntil === null || p.lockedUntil.getTime() < Date.now())
        expect(yield* repository.advance(leaseOf(row), { finished: false })).toBe(false)
        expect((yield* get(program.runId)).step).toBe(0)
      }))

    test("every claim writes a fresh fencing token: an earlier claim of the same step by the same worker can no longer write", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const program = yield* insert()
        const first = yield* claimed({ runId: program.runId, step: 0 })
        expect(first.leaseToken).not.toBeNull()
        // The first run ends (a timeout recorded as a retry) while its job goes on; the same worker claims again.
        expect(yield* repository.scheduleRetry(leaseOf(first), { errorMessage: "timed out", delay: Duration.zero, countAttempt: true }))
          .toBe(true)
        const second = Option.getOrThrow(yield* eventually(claim({ runId: program.runId, step: 0 }), Option.isSome))
        expect(second.lockedBy).toBe(first.lockedBy)
        expect(second.leaseToken).not.toBe(first.leaseToken)
        const abandoned = leaseOf(first)
        expect(yield* repository.writeJobData(abandoned, "first", { from: "abandoned run" })).toBe(false)
        expect(yield* repository.extendLease(abandoned, lease)).toBe("lost")
        expect(yield* repository.advance(abandoned, { finished: false })).toBe(false)
        expect(yield* repository.scheduleRetry(abandoned, { errorMessage: "x", delay: Duration.zero, countAttempt: true }))
          .toBe(false)
        expect(yield* repository.fail(abandoned, "x")).toBe(false)
        yield* repository.release(abandoned)
        expect(yield* get(program.runId)).toMatchObject({ step: 0, lockedBy: owner, leaseToken: second.leaseToken, jobData: {} })
        expect(yield* repository.writeJobData(leaseOf(second), "first", { from: "current run" })).toBe(true)
        expect((yield* get(program.runId)).jobData).toEqual({ first: { from: "current run" } })
      }))

    test("a claim that takes over a lease never released counts a lost run; completing the step resets the count", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const program = yield* insert()
        const first = yield* claimed({ runId: program.runId, step: 0 }, owner, Duration.millis(200))
        expect(first.stepLostCount).toBe(0)
        // Its worker dies: nothing is recorded, the lease expires.
        const second = Option.getOrThrow(yield* eventually(claim({ runId: program.runId, step: 0 }, other), Option.isSome))
        expect(second).toMatchObject({ stepLostCount: 1, stepRetryCount: 0, lockedBy: other })
        // A run that records its outcome (here a retry) or gives the step back is not lost.
        yield* repository.scheduleRetry(leaseOf(second), { errorMessage: "x", delay: Duration.zero, countAttempt: true })
        const third = Option.getOrThrow(yield* eventually(claim({ runId: program.runId, step: 0 }), Option.isSome))
        expect(third).toMatchObject({ stepLostCount: 1, stepRetryCount: 1 })
        yield* repository.release(leaseOf(third))
        const fourth = yield* claimed({ runId: program.runId, step: 0 })
        expect(fourth.stepLostCount).toBe(1)
        expect(yield* repository.advance(leaseOf(fourth), { finished: false })).toBe(true)
        expect(yield* get(program.runId)).toMatchObject({ step: 1, stepLostCount: 0, stepRetryCount: 0 })

        // Continuation resets both counts for the step it claims, as advance does.
        const continuing = yield* insert({ jobs: ["first", "second", "third"] })
        yield* claimed({ runId: continuing.runId, step: 0 }, owner, Duration.millis(200))
        const retaken = Option.getOrThrow(yield* eventually(claim({ runId: continuing.runId, step: 0 }, other), Option.isSome))
        yield* repository.scheduleRetry(leaseOf(retaken), { errorMessage: "x", delay: Duration.zero, countAttempt: true })
        const counted = yield* claimed({ runId: continuing.runId, step: 0 }, other)
        expect(counted).toMatchObject({ stepLostCount: 1, stepRetryCount: 1 })
        const next = yield* repository.advanceAndClaim(leaseOf(counted), { owner: other, leaseFor: lease, nextToken: randomUUID() })
        expect(Option.getOrThrow(next)).toMatchObject({ step: 1, stepLostCount: 0, stepRetryCount: 0 })
        expect(yield* get(continuing.runId)).toMatchObject({ step: 1, stepLostCount: 0, stepRetryCount: 0 })
      }))

    test("a lease that expired refuses by itself every write of its run, with no other claim in between", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const program = yield* insert()
        const row = yield* claimed({ runId: program.runId, step: 0 }, owner, Duration.millis(200))
        yield* eventually(get(program.runId), (p) => p.lockedUntil === null || p.lockedUntil.getTime() < Date.now() - 50)
        expect(yield* repository.extendLease(leaseOf(row), lease)).toBe("lost")
        expect(yield* repository.writeJobData(leaseOf(row), "first", { late: true })).toBe(false)
        expect(yield* repository.advance(leaseOf(row), { finished: false })).toBe(false)
        const continuation = { owner, leaseFor: lease, nextToken: randomUUID() }
        expect(Option.isNone(yield* repository.advanceAndClaim(leaseOf(row), continuation))).toBe(true)
        expect(yield* get(program.runId)).toMatchObject({ step: 0, jobData: {}, leaseToken: row.leaseToken })
      }))

    test("recoverExpired returns each step whose lease expired unreleased once, and the next claim counts the lost run", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const dead = yield* insert()
        const alive = yield* insert()
        const released = yield* insert()
        // Cancelled while its run held it, and that run never came back: not in progress, so nothing to re-run.
        const cancelled = yield* insert()
        yield* claimed({ runId: cancelled.runId, step: 0 }, owner, Duration.millis(200))
        yield* repository.cancel(cancelled.runId, "by user")
        yield* claimed({ runId: dead.runId, step: 0 }, owner, Duration.millis(200))
        yield* claimed({ runId: alive.runId, step: 0 }, owner, lease)
        yield* repository.release(leaseOf(yield* claimed({ runId: released.runId, step: 0 }, owner, Duration.millis(200))))
        yield* eventually(get(cancelled.runId), (p) => p.lockedUntil !== null && p.lockedUntil.getTime() < Date.now() - 50)
        const found = yield* eventually(
          repository.recoverExpired(100).pipe(
            Effect.map((all) => all.filter((w) => [dead, alive, released, cancelled].some((p) => p.runId === w.runId)))
          ),
          (mine) => mine.length > 0
        )
        expect(found).toEqual([{ runId: dead.runId, step: 0 }])
        expect(yield* get(cancelled.runId)).toMatchObject({ lockedBy: owner, erroredAt: expect.any(Date) })
        expect(yield* get(dead.runId)).toMatchObject({ lockedBy: owner, lockedUntil: null })
        const again = yield* repository.recoverExpired(100)
        expect(again.some((w) => w.runId === dead.runId)).toBe(false)
        expect((yield* claimed({ runId: dead.runId, step: 0 }, other)).stepLostCount).toBe(1)
      }))

    test("resume leaves a lease that is still live alone, and clears one that expired", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const live = yield* insert()
        const row = yield* claimed({ runId: live.runId, step: 0 })
        yield* repository.cancel(live.runId, "by user")
        const resumed = yield* repository.resume(live.runId)
        expect(resumed).toMatchObject({ erroredAt: null, lockedBy: owner, leaseToken: row.leaseToken })
        expect(Option.isNone(yield* claim({ runId: live.runId, step: 0 }, other))).toBe(true)
        // The run goes on under its own token.
        expect(yield* repository.extendLease(leaseOf(row), lease)).toBe("held")
        expect(yield* repository.advance(leaseOf(row), { finished: false })).toBe(true)

        const expired = yield* insert()
        yield* claimed({ runId: expired.runId, step: 0 }, owner, Duration.millis(200))
        yield* repository.cancel(expired.runId, "by user")
        yield* eventually(get(expired.runId), (p) => p.lockedUntil !== null && p.lockedUntil.getTime() < Date.now() - 50)
        expect(yield* repository.resume(expired.runId)).toMatchObject({ lockedBy: null, lockedUntil: null, stepLostCount: 0 })
        expect((yield* claimed({ runId: expired.runId, step: 0 }, other)).stepLostCount).toBe(0)
      }))

    test("an error message or cancel reason with NUL and any other text is stored (NUL as the text \\u0000)", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const program = yield* insert()
        const row = yield* claimed({ runId: program.runId, step: 0 })
        const message = "bad byte \u0000 in 'quotes' \"double\" ✓ 😀 \\ end"
        expect(yield* repository.fail(leaseOf(row), message)).toBe(true)
        expect((yield* get(program.runId)).errorMessage).toBe(message.replace("\u0000", "\\u0000"))
        const other = yield* insert()
        yield* repository.cancel(other.runId, "reason \u0000")
        expect((yield* get(other.runId)).errorMessage).toBe("reason \\u0000")
      }))

    test("extendLease: held while held, cancelled once errored, lost once the step moved", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const program = yield* insert()
        const row = yield* claimed({ runId: program.runId, step: 0 }, owner, Duration.seconds(5))
        expect(yield* repository.extendLease(leaseOf(row), Duration.seconds(60))).toBe("held")
        const extended = yield* get(program.runId)
        expect(extended.lockedUntil!.getTime()).toBeGreaterThan(row.lockedUntil!.getTime())
        expect(extended.lockedBy).toBe(owner)
        expect(yield* repository.extendLease({ ...leaseOf(row), token: otherToken }, lease)).toBe("lost")

        yield* repository.cancel(program.runId, "by user")
        expect(yield* repository.extendLease(leaseOf(row), lease)).toBe("cancelled")

        const moving = yield* insert()
        const movingRow = yield* claimed({ runId: moving.runId, step: 0 })
        expect(yield* repository.advance(leaseOf(movingRow), { finished: false })).toBe(true)
        expect(yield* repository.extendLease(leaseOf(movingRow), lease)).toBe("lost")
        // Cancelled at a later step than the run's: that run lost its step before, it was not cancelled.
        yield* repository.cancel(moving.runId, "by user")
        expect(yield* repository.extendLease(leaseOf(movingRow), lease)).toBe("lost")
      }))

    test("advance moves to the next step, resets the retry count and clears the lease; finished sets finished_at", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const program = yield* insert()
        const row = yield* claimed({ runId: program.runId, step: 0 })
        yield* repository.scheduleRetry(leaseOf(row), { errorMessage: "once", delay: Duration.zero, countAttempt: true })
        const retried = Option.getOrThrow(yield* eventually(claim({ runId: program.runId, step: 0 }), Option.isSome))
        expect(retried.stepRetryCount).toBe(1)
        expect(yield* repository.advance(leaseOf(retried), { finished: false })).toBe(true)
        const moved = yield* get(program.runId)
        expect(moved).toMatchObject({ step: 1, stepRetryCount: 0, lockedBy: null, lockedUntil: null, finishedAt: null })
        // Advancing twice is impossible: the lease is gone.
        expect(yield* repository.advance(leaseOf(retried), { finished: false })).toBe(false)
        expect((yield* get(program.runId)).step).toBe(1)
        // The next step is due at once.
        const next = yield* claimed({ runId: program.runId, step: 1 })
        expect(yield* repository.advance(leaseOf(next), { finished: true })).toBe(true)
        const done = yield* get(program.runId)
        expect(done.finishedAt).toBeInstanceOf(Date)
        expect(done).toMatchObject({ step: 1, lockedBy: null, erroredAt: null })
        expect(yield* repository.advance(leaseOf(next), { finished: true })).toBe(false)
      }))

    test("advanceAndClaim moves to the next step and claims it under the new token in one write, guarded like advance", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const program = yield* insert({ jobs: ["first", "second", "third"] })
        const row = yield* claimed({ runId: program.runId, step: 0 })
        yield* repository.scheduleRetry(leaseOf(row), { errorMessage: "once", delay: Duration.zero, countAttempt: true })
        const retried = Option.getOrThrow(yield* eventually(claim({ runId: program.runId, step: 0 }), Option.isSome))
        const continuation = { owner: other, leaseFor: lease, nextToken: randomUUID() }
        // Refused under a token no claim made, or for a step the program is not at: nothing changes.
        expect(Option.isNone(yield* repository.advanceAndClaim({ ...leaseOf(retried), token: otherToken }, continuation)))
          .toBe(true)
        expect(Option.isNone(yield* repository.advanceAndClaim({ ...leaseOf(retried), step: 1 }, continuation)))
          .toBe(true)
        expect(yield* get(program.runId)).toMatchObject({ step: 0, stepRetryCount: 1, leaseToken: retried.leaseToken })
        const next = Option.getOrThrow(yield* repository.advanceAndClaim(leaseOf(retried), continuation))
        // Returned as stored: the next step, leased to the new owner under the new token, due, no retries or lost runs.
        expect(yield* get(program.runId)).toEqual(next)
        expect(next).toMatchObject({
          step: 1,
          stepRetryCount: 0,
          stepLostCount: 0,
          lockedBy: other,
          leaseToken: continuation.nextToken,
          finishedAt: null,
          erroredAt: null
        })
        expect(next.lockedUntil!.getTime()).toBeGreaterThan(next.updatedAt.getTime())
        expect(next.nextRunAt.getTime()).toBeLessThanOrEqual(next.updatedAt.getTime())
        // The step is leased: a delivered wake-up for it is refused; the previous run's token writes nothing.
        expect(Option.isNone(yield* claim({ runId: program.runId, step: 1 }))).toBe(true)
        expect(yield* repository.advance(leaseOf(retried), { finished: false })).toBe(false)
        expect(yield* repository.writeJobData(leaseOf(retried), "first", { late: true })).toBe(false)
        expect(Option.isNone(yield* repository.advanceAndClaim(leaseOf(retried), { ...continuation, nextToken: "x" })))
          .toBe(true)
        expect(yield* repository.writeJobData(leaseOf(next), "second", { n: 1 })).toBe(true)
        // A cancelled program is not continued, even under the lease of its current step.
        yield* repository.cancel(program.runId, "stop")
        expect(Option.isNone(yield* repository.advanceAndClaim(leaseOf(next), { ...continuation, nextToken: "y" })))
          .toBe(true)
        expect(yield* get(program.runId)).toMatchObject({ step: 1, leaseToken: continuation.nextToken })
      }))

    test("writeJobData replaces only that job's entry, only while the lease is held", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const program = yield* insert({
          jobs: ["first", "second", "we'ird \"name\""],
          jobData: { first: { a: 1, keep: "me" }, second: { b: [1, 2, { c: null }] } }
        })
        const row = yield* claimed({ runId: program.runId, step: 0 })
        expect(yield* repository.writeJobData(leaseOf(row), "first", { a: 2 })).toBe(true)
        expect((yield* get(program.runId)).jobData).toEqual({ first: { a: 2 }, second: { b: [1, 2, { c: null }] } })
        expect(yield* repository.writeJobData(leaseOf(row), "we'ird \"name\"", { n: "é ✓" })).toBe(true)
        expect(yield* repository.writeJobData(leaseOf(row), "first", { list: [null, true, 1.5, "s"] })).toBe(true)
        expect((yield* get(program.runId)).jobData).toEqual({
          first: { list: [null, true, 1.5, "s"] },
          second: { b: [1, 2, { c: null }] },
          "we'ird \"name\"": { n: "é ✓" }
        })
        expect(yield* repository.writeJobData({ ...leaseOf(row), token: otherToken }, "first", {})).toBe(false)
        expect(yield* repository.writeJobData({ ...leaseOf(row), step: 1 }, "first", {})).toBe(false)
        // Job data survives advancing.
        yield* repository.advance(leaseOf(row), { finished: false })
        expect(yield* repository.writeJobData(leaseOf(row), "first", { late: true })).toBe(false)
        expect((yield* get(program.runId)).jobData.first).toEqual({ list: [null, true, 1.5, "s"] })
      }))

    test("scheduleRetry records the error, counts the attempt (or not), releases the lease and delays the step", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const program = yield* insert()
        const row = yield* claimed({ runId: program.runId, step: 0 })
        expect(
          yield* repository.scheduleRetry(leaseOf(row), {
            errorMessage: "rate limited",
            delay: Duration.seconds(60),
            countAttempt: true
          })
        ).toBe(true)
        const retried = yield* get(program.runId)
        expect(retried).toMatchObject({ step: 0, stepRetryCount: 1, errorMessage: "rate limited", lockedBy: null })
        expect(retried.erroredAt).toBeNull()
        expect(retried.nextRunAt.getTime() - row.lockedUntil!.getTime()).toBeGreaterThan(20_000)
        expect(Option.isNone(yield* claim({ runId: program.runId, step: 0 }))).toBe(true)
        expect(yield* repository.scheduleRetry(leaseOf(row), { errorMessage: "x", delay: Duration.zero, countAttempt: true }))
          .toBe(false)

        const budget = yield* insert()
        const budgetRow = yield* claimed({ runId: budget.runId, step: 0 })
        yield* repository.scheduleRetry(leaseOf(budgetRow), {
          errorMessage: "over budget",
          delay: Duration.zero,
          countAttempt: false
        })
        expect(yield* get(budget.runId)).toMatchObject({ stepRetryCount: 0, errorMessage: "over budget" })
        expect(Option.isSome(yield* eventually(claim({ runId: budget.runId, step: 0 }), Option.isSome))).toBe(true)
      }))

    test("fail sets errored_at and the message (not truncated) and releases the lease", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const program = yield* insert()
        const row = yield* claimed({ runId: program.runId, step: 0 })
        const message = `fatal: ${"x".repeat(2_000)}`
        expect(yield* repository.fail(leaseOf(row), message)).toBe(true)
        const failed = yield* get(program.runId)
        expect(failed.erroredAt).toBeInstanceOf(Date)
        expect(failed).toMatchObject({ errorMessage: message, lockedBy: null, step: 0, finishedAt: null })
        expect(yield* repository.fail(leaseOf(row), "again")).toBe(false)
      }))

    test("release gives the step back at once, only for its owner", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const program = yield* insert()
        const row = yield* claimed({ runId: program.runId, step: 0 })
        yield* repository.release({ ...leaseOf(row), token: otherToken })
        expect((yield* get(program.runId)).lockedBy).toBe(owner)
        yield* repository.release(leaseOf(row))
        const released = yield* get(program.runId)
        expect(released).toMatchObject({ lockedBy: null, lockedUntil: null, stepRetryCount: 0, errorMessage: null })
        expect(Option.isSome(yield* claim({ runId: program.runId, step: 0 }, other))).toBe(true)
      }))

    test("cancel errors an in-progress program; cancel and resume refuse the wrong state or an unknown program", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const program = yield* insert()
        const cancelled = yield* repository.cancel(program.runId, "requested by user")
        expect(cancelled.erroredAt).toBeInstanceOf(Date)
        expect(cancelled).toMatchObject({ runId: program.runId, errorMessage: "requested by user" })
        expect((yield* Effect.flip(repository.cancel(program.runId, "again")))._tag).toBe("ProgramStateError")
        const unknown = yield* Effect.flip(repository.cancel(randomUUID(), "x"))
        expect(unknown._tag).toBe("ProgramNotFoundError")
        const unknownResume = yield* Effect.flip(repository.resume(randomUUID()))
        expect(unknownResume._tag).toBe("ProgramNotFoundError")

        const running = yield* insert()
        expect((yield* Effect.flip(repository.resume(running.runId)))._tag).toBe("ProgramStateError")

        const finished = yield* insert({ jobs: ["only"] })
        const row = yield* claimed({ runId: finished.runId, step: 0 })
        yield* repository.advance(leaseOf(row), { finished: true })
        expect((yield* Effect.flip(repository.cancel(finished.runId, "late")))._tag).toBe("ProgramStateError")
        expect((yield* Effect.flip(repository.resume(finished.runId)))._tag).toBe("ProgramStateError")
      }))

    test("resume clears the error and the retry count at the failed step, which is claimable again", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const program = yield* insert()
        const first = yield* claimed({ runId: program.runId, step: 0 })
        yield* repository.advance(leaseOf(first), { finished: false })
        const second = yield* claimed({ runId: program.runId, step: 1 })
        yield* repository.scheduleRetry(leaseOf(second), { errorMessage: "x", delay: Duration.zero, countAttempt: true })
        const again = yield* eventually(claim({ runId: program.runId, step: 1 }), Option.isSome)
        yield* repository.fail(leaseOf(Option.getOrThrow(again)), "fatal")
        const resumed = yield* repository.resume(program.runId)
        expect(resumed).toMatchObject({
          step: 1,
          stepRetryCount: 0,
          erroredAt: null,
          errorMessage: null,
          lockedBy: null,
          finishedAt: null
        })
        expect(Option.isSome(yield* claim({ runId: program.runId, step: 1 }))).toBe(true)
      }))

    test("findStale returns due, unleased, unfinished, unerrored steps idle for long enough, each once per idle period", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const idle = yield* Effect.forEach([1, 2, 3], () => insert())
        const leased = yield* insert()
        yield* claimed({ runId: leased.runId, step: 0 })
        const moved = yield* insert()
        const movedRow = yield* claimed({ runId: moved.runId, step: 0 })
        yield* repository.advance(leaseOf(movedRow), { finished: false })
        const finished = yield* insert({ jobs: ["only"] })
        yield* repository.advance(leaseOf(yield* claimed({ runId: finished.runId, step: 0 })), { finished: true })
        const cancelled = yield* insert()
        yield* repository.cancel(cancelled.runId, "x")
        const delayed = yield* insert()
        yield* repository.scheduleRetry(leaseOf(yield* claimed({ runId: delayed.runId, step: 0 })), {
          errorMessage: "later",
          delay: Duration.minutes(10),
          countAttempt: true
        })

        // Each call returns at most `limit`, and marks what it returns: together the calls find each stale step once.
        const found: Array<WakeUp> = []
        yield* eventually(
          Effect.map(repository.findStale({ idleFor: Duration.millis(200), limit: 2 }), (batch) => {
            expect(batch.length).toBeLessThanOrEqual(2)
            found.push(...batch)
          }),
          () => found.length >= 4
        )
        const byRunId = (wakeUps: ReadonlyArray<WakeUp>) => [...wakeUps].sort((a, b) => a.runId.localeCompare(b.runId))
        expect(byRunId(found)).toEqual(
          byRunId([...idle.map((p) => ({ runId: p.runId, step: 0 })), { runId: moved.runId, step: 1 }])
        )
        // Just returned: not stale again until another idle period has passed (the sweeper re-publishes each once).
        expect(yield* repository.findStale({ idleFor: Duration.millis(200), limit: 100 })).toEqual([])
        expect(yield* repository.findStale({ idleFor: Duration.hours(1), limit: 100 })).toEqual([])
        const again = yield* eventually(
          repository.findStale({ idleFor: Duration.millis(200), limit: 100 }),
          (batch) => batch.length > 0
        )
        expect(again.every((wakeUp) => found.some((f) => f.runId === wakeUp.runId))).toBe(true)
      }))

    test("findStale backs off: a step returned after waiting W is not returned again before it has waited W more", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const program = yield* insert()
        const mine = (idleFor: Duration.DurationInput) =>
          Effect.map(
            repository.findStale({ idleFor: Duration.decode(idleFor), limit: 100 }),
            (batch) => batch.some((wakeUp) => wakeUp.runId === program.runId)
          )
        // First returned once it has waited at least 600 ms.
        yield* eventually(mine("600 millis"), (found) => found)
        const firstAt = Date.now()
        // With a 200 ms idle period it would come back after 200 ms; backing off, only after 600 ms more (less the
        // time between the database's mark and `firstAt`, which a loaded machine stretches).
        yield* eventually(mine("200 millis"), (found) => found)
        expect(Date.now() - firstAt).toBeGreaterThanOrEqual(400)
      }))

    test("findStale leaves alone a step due after the queue's head minus idleFor: it is still queued behind that head", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const program = yield* insert()
        const due = program.nextRunAt.getTime()
        const mine = (queueHead: number) =>
          Effect.map(
            repository.findStale({ idleFor: Duration.millis(200), limit: 100, queueHead: new Date(queueHead) }),
            (batch) => batch.some((wakeUp) => wakeUp.runId === program.runId)
          )
        // The worker is starting steps due just before this one: it is behind the head, not lost.
        yield* eventually(get(program.runId), () => Date.now() - due > 400)
        expect(yield* mine(due + 100)).toBe(false)
        // The head has moved well past it: it should have run by now.
        expect(yield* mine(due + 300)).toBe(true)
      }))

    test("list filters by status, in-progress and retry count, orders by id, pages with limit and offset", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const all = yield* Effect.forEach([0, 1, 2, 3, 4, 5], () => insert({ jobs: ["only"] }))
        const ids = all.map((p) => p.id)
        const finish = (p: ProgramRecord) =>
          Effect.flatMap(claimed({ runId: p.runId, step: 0 }), (row) =>
            repository.advance(leaseOf(row), { finished: true }))
        yield* finish(all[0]!)
        yield* finish(all[1]!)
        yield* repository.cancel(all[2]!.runId, "x")
        const retried = yield* claimed({ runId: all[3]!.runId, step: 0 })
        yield* repository.scheduleRetry(leaseOf(retried), { errorMessage: "x", delay: Duration.zero, countAttempt: true })

        const idsOf = (query: Program.ListQuery) => Effect.map(repository.list(query), (rows) => rows.map((p) => p.id))
        expect(yield* idsOf({})).toEqual([...ids].reverse())
        expect(yield* idsOf({ order: "asc", orderBy: "id" })).toEqual(ids)
        expect(yield* idsOf({ order: "asc", limit: 2, offset: 1 })).toEqual(ids.slice(1, 3))
        expect(yield* idsOf({ order: "desc", limit: 2 })).toEqual([ids[5], ids[4]])
        expect(yield* idsOf({ inProgressOnly: true, order: "asc" })).toEqual(ids.slice(3))
        expect(yield* idsOf({ status: "in_progress", order: "asc" })).toEqual(ids.slice(3))
        expect(yield* idsOf({ status: "finished", order: "asc" })).toEqual(ids.slice(0, 2))
        expect(yield* idsOf({ status: "errored" })).toEqual([ids[2]])
        expect(yield* idsOf({ stepRetryCountGte: 1 })).toEqual([ids[3]])
        expect(yield* idsOf({ inProgressOnly: true, stepRetryCountGte: 1 })).toEqual([ids[3]])
        expect(yield* idsOf({ status: "finished", inProgressOnly: true })).toEqual([])
        expect(yield* idsOf({ offset: 10 })).toEqual([])
      }))

    sqlTest("a manual UPDATE of errored_at cancels exactly as cancel does", (_namespace, execute) =>
      Effect.gen(function*() {
        const repository = yield* repo
        const running = yield* insert()
        const row = yield* claimed({ runId: running.runId, step: 0 })
        const waiting = yield* insert()
        yield* execute(
          `UPDATE {table} SET errored_at = CURRENT_TIMESTAMP, error_message = 'cancelled by hand' WHERE run_id IN ('${running.runId}', '${waiting.runId}')`
        )
        expect(yield* repository.extendLease(leaseOf(row), lease)).toBe("cancelled")
        expect(yield* repository.advance(leaseOf(row), { finished: false })).toBe(false)
        expect(yield* repository.writeJobData(leaseOf(row), "first", {})).toBe(false)
        expect(Option.isNone(yield* claim({ runId: waiting.runId, step: 0 }))).toBe(true)
        const cancelled = yield* get(waiting.runId)
        expect(cancelled.erroredAt).toBeInstanceOf(Date)
        expect(cancelled.errorMessage).toBe("cancelled by hand")
        expect((yield* Effect.flip(repository.cancel(waiting.runId, "again")))._tag).toBe("ProgramStateError")
        expect(yield* repository.findStale({ idleFor: Duration.zero, limit: 10 })).toEqual([])
        const resumed = yield* repository.resume(waiting.runId)
        expect(resumed.erroredAt).toBeNull()
      }))

    sqlTest("rows whose JSON was broken by hand are read with `corruption` set, never failing a read", (
      _namespace,
      execute
    ) =>
      Effect.gen(function*() {
        const repository = yield* repo
        const healthy = yield* insert()
        const wrongJobs = yield* insert()
        const wrongData = yield* insert()
        const malformed = yield* insert()
        yield* execute(`UPDATE {table} SET jobs = '{"not":"a list"}' WHERE run_id = '${wrongJobs.runId}'`)
        yield* execute(`UPDATE {table} SET program_data = '[1, 2]' WHERE run_id = '${wrongData.runId}'`)
        // jsonb and MariaDB's JSON check refuse malformed text; where it is accepted (SQLite), it must still read.
        const malformedWritten = yield* execute(
          `UPDATE {table} SET jobs = '["first", oops' WHERE run_id = '${malformed.runId}'`
        ).pipe(Effect.as(true), Effect.orElseSucceed(() => false))

        expect((yield* get(healthy.runId)).corruption).toBeNull()
        expect((yield* get(wrongJobs.runId)).corruption).toMatch(/jobs/)
        expect((yield* get(wrongData.runId)).corruption).toMatch(/program_data/)
        if (malformedWritten) expect((yield* get(malformed.runId)).corruption).toMatch(/jobs is not valid JSON/)

        const listed = yield* repository.list({ limit: 10 })
        expect(listed).toHaveLength(4)
        const claimedCorrupt = yield* claimed({ runId: wrongJobs.runId, step: 0 })
        expect(claimedCorrupt.corruption).toMatch(/jobs/)
        expect(yield* repository.fail(leaseOf(claimedCorrupt), claimedCorrupt.corruption!)).toBe(true)
      }))

    // Batch creation, idempotency keys, delayed start, search, bulk operations and retention.

    const newProgram = (program: Partial<Program.NewProgram> = {}): Program.NewProgram => ({
      runId: randomUUID(),
      jobs: ["first", "second"],
      programData: {},
      jobData: {},
      ...program
    })
    const finishOne = (program: ProgramRecord) =>
      Effect.flatMap(repo, (repository) =>
        Effect.flatMap(claimed({ runId: program.runId, step: program.step }), (row) =>
          repository.advance(leaseOf(row), { finished: true })))
    const count = Effect.flatMap(repo, (repository) =>
      Effect.map(repository.list({ limit: 100_000 }), (rows) => rows.length))

    test("insertMany stores every program in input order, at step 0, due now", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const inputs = [0, 1, 2].map((shop) => newProgram({ programData: { shop }, jobData: { first: { n: shop } } }))
        const inserted = yield* repository.insertMany(inputs)
        expect(inserted.map((entry) => entry.created)).toEqual([true, true, true])
        expect(inserted.map((entry) => entry.program.runId)).toEqual(inputs.map((input) => input.runId))
        expect(inserted.map((entry) => entry.program.programData)).toEqual([{ shop: 0 }, { shop: 1 }, { shop: 2 }])
        for (const { program } of inserted) {
          expect(program).toMatchObject({ step: 0, stepRetryCount: 0, finishedAt: null, idempotencyKey: null })
          expect(yield* get(program.runId)).toEqual(program)
          expect(Option.isSome(yield* claim({ runId: program.runId, step: 0 }))).toBe(true)
        }
        expect(yield* repository.insertMany([])).toEqual([])
      }))

    test("insertMany stores one program per idempotency key, whatever the program's state or content", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const [first, again] = yield* repository.insertMany([
          newProgram({ idempotencyKey: "order-1", programData: { n: 1 } }),
          newProgram({ idempotencyKey: "order-1", programData: { n: 2 } })
        ])
        expect(first!.created).toBe(true)
        expect(first!.program.idempotencyKey).toBe("order-1")
        expect(again).toEqual({ program: first!.program, created: false })
        yield* finishOne(first!.program)
        const [later, other, plain] = yield* repository.insertMany([
          newProgram({ idempotencyKey: "order-1", jobs: ["different"] }),
          newProgram({ idempotencyKey: "order-2" }),
          newProgram()
        ])
        expect(later!.created).toBe(false)
        expect(later!.program.runId).toBe(first!.program.runId)
        expect(later!.program.finishedAt).toBeInstanceOf(Date)
        expect(later!.program.jobs).toEqual(["first", "second"])
        expect(other!.created).toBe(true)
        expect(plain!.created).toBe(true)
        expect(yield* count).toBe(3)
      }))

    test("insertMany stores nothing when one program cannot be stored, across chunks", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const inputs = Array.from({ length: 1001 }, () => newProgram({ jobs: ["only"] }))
        const duplicate = { ...inputs[0]!, runId: inputs[0]!.runId }
        const outcome = yield* repository.insertMany([...inputs, duplicate]).pipe(
          Effect.match({ onFailure: (error) => error._tag, onSuccess: (stored) => `stored ${stored.length}` })
        )
        expect(outcome).toBe("RepositoryError")
        expect(yield* count).toBe(0)
      }))

    test("insertMany with startAfter or startAt: the first step is not claimable before then", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const startAt = new Date(Date.now() + 3_600_000)
        const [soon, later] = yield* repository.insertMany([
          newProgram({ startAfter: Duration.millis(700) }),
          newProgram({ startAt })
        ])
        expect(soon!.program.nextRunAt.getTime() - soon!.program.createdAt.getTime()).toBeGreaterThanOrEqual(690)
        expect(later!.program.nextRunAt.getTime()).toBe(startAt.getTime())
        expect(Option.isNone(yield* claim({ runId: soon!.program.runId, step: 0 }))).toBe(true)
        expect(Option.isNone(yield* claim({ runId: later!.program.runId, step: 0 }))).toBe(true)
        expect(yield* repository.findStale({ idleFor: Duration.zero, limit: 10 })).toEqual([])
        yield* eventually(claim({ runId: soon!.program.runId, step: 0 }), Option.isSome)
        expect(Option.isNone(yield* claim({ runId: later!.program.runId, step: 0 }))).toBe(true)
      }))

    test("list searches by current job, created between, runId prefix and programData, with an id cursor", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const inserted = yield* repository.insertMany([
          newProgram({ programData: { shop: 1, tier: "gold", meta: { region: "eu", beta: true } } }),
          newProgram({ programData: { shop: 2, tier: "gold", meta: { region: "us", beta: false } } }),
          newProgram({ programData: { shop: 1.0, tier: "silver", meta: null, "odd \"key\"": 1 } }),
          newProgram({ programData: { shop: "1", tier: null } })
        ])
        const [a, b, c, d] = inserted.map((entry) => entry.program)
        // b moves to its second job.
        const row = yield* claimed({ runId: b!.runId, step: 0 })
        yield* repository.advance(leaseOf(row), { finished: false })
        const idsOf = (query: Program.ListQuery) =>
          Effect.map(repository.list({ order: "asc", ...query }), (rows) => rows.map((p) => p.id))

        expect(yield* idsOf({ job: "second" })).toEqual([b!.id])
        expect(yield* idsOf({ job: "first" })).toEqual([a!.id, c!.id, d!.id])
        expect(yield* idsOf({ job: "third" })).toEqual([])
        expect(yield* idsOf({ dataContains: { shop: 1 } })).toEqual([a!.id, c!.id])
        expect(yield* idsOf({ dataContains: { shop: "1" } })).toEqual([d!.id])
        expect(yield* idsOf({ dataContains: { tier: "gold", meta: { region: "us" } } })).toEqual([b!.id])
        expect(yield* idsOf({ dataContains: { meta: { beta: true } } })).toEqual([a!.id])
        expect(yield* idsOf({ dataContains: { meta: { beta: false } } })).toEqual([b!.id])
        expect(yield* idsOf({ dataContains: { tier: null } })).toEqual([d!.id])
        expect(yield* idsOf({ dataContains: { "odd \"key\"": 1 } })).toEqual([c!.id])
        expect(yield* idsOf({ dataContains: { missing: 1 } })).toEqual([])
        expect(yield* idsOf({ dataContains: {} })).toEqual([a!.id, b!.id, c!.id, d!.id])
        expect(yield* idsOf({ runIdPrefix: c!.runId.slice(0, 13) })).toEqual([c!.id])
        // The prefix is case-sensitive (SQLite's LIKE is not): a UUID's lower-case hex matches no upper-case prefix.
        // (The prefix of the runId with its letters upper-cased: when it has none, it is the runId's own prefix.)
        const upper = c!.runId.slice(0, 13).toUpperCase()
        expect(yield* idsOf({ runIdPrefix: upper })).toEqual(upper === c!.runId.slice(0, 13) ? [c!.id] : [])
        expect(yield* idsOf({ runIdPrefix: "%" })).toEqual([])
        expect(yield* idsOf({ runIdPrefix: c!.runId })).toEqual([c!.id])

        expect(yield* idsOf({ after: a!.id, limit: 2 })).toEqual([b!.id, c!.id])
        expect(yield* idsOf({ after: c!.id, limit: 2 })).toEqual([d!.id])
        expect(yield* idsOf({ order: "desc", after: c!.id })).toEqual([b!.id, a!.id])
        expect(yield* idsOf({ after: a!.id, job: "first" })).toEqual([c!.id, d!.id])

        // A later program, created at a later database time than every one above.
        const e = yield* eventually(insert(), (program) => program.createdAt > d!.createdAt)
        const all = yield* repository.list({ order: "asc", limit: 1000 })
        const cutoff = e.createdAt
        expect(yield* idsOf({ createdAfter: cutoff, limit: 1000 })).toEqual(
          all.filter((p) => p.createdAt >= cutoff).map((p) => p.id)
        )
        expect(yield* idsOf({ createdBefore: cutoff, limit: 1000 })).toEqual(
          all.filter((p) => p.createdAt < cutoff).map((p) => p.id)
        )
        expect(yield* idsOf({ createdAfter: d!.createdAt, createdBefore: cutoff, limit: 1000 })).toEqual(
          all.filter((p) => p.createdAt >= d!.createdAt && p.createdAt < cutoff).map((p) => p.id)
        )
        expect(yield* idsOf({ createdBefore: cutoff })).toContain(a!.id)
        expect(yield* idsOf({ createdBefore: cutoff })).not.toContain(e.id)
      }))

    test("cancelBatch cancels in-progress programs matching the filter, a batch at a time, never a finished one", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const programs = (yield* repository.insertMany(
          Array.from({ length: 5 }, (_, n) => newProgram({ programData: { n } }))
        )).map((entry) => entry.program)
        yield* finishOne(programs[1]!)
        yield* repository.cancel(programs[2]!.runId, "earlier")
        const running = yield* claimed({ runId: programs[3]!.runId, step: 0 })

        const first = yield* repository.cancelBatch({}, "bulk", { afterId: 0, limit: 1 })
        expect(first).toEqual([{ id: programs[0]!.id, runId: programs[0]!.runId, step: 0 }])
        const rest = yield* repository.cancelBatch({}, "bulk", { afterId: first[0]!.id, limit: 10 })
        expect(rest.map((p) => p.id).sort((x, y) => x - y)).toEqual([programs[3]!.id, programs[4]!.id])
        expect(yield* repository.cancelBatch({}, "bulk", { afterId: 0, limit: 10 })).toEqual([])

        expect((yield* get(programs[1]!.runId)).erroredAt).toBeNull()
        expect((yield* get(programs[2]!.runId)).errorMessage).toBe("earlier")
        expect(yield* get(programs[4]!.runId)).toMatchObject({ errorMessage: "bulk" })
        expect(yield* repository.extendLease(leaseOf(running), lease)).toBe("cancelled")

        const more = (yield* repository.insertMany([
          newProgram({ programData: { keep: true } }),
          newProgram({ programData: { keep: false } })
        ])).map((entry) => entry.program)
        const changed = yield* repository.cancelBatch({ dataContains: { keep: false }, job: "first" }, "only one", {
          afterId: 0,
          limit: 10
        })
        expect(changed.map((p) => p.runId)).toEqual([more[1]!.runId])
        expect((yield* get(more[0]!.runId)).erroredAt).toBeNull()
        expect(yield* repository.cancelBatch({ status: "finished" }, "x", { afterId: 0, limit: 10 })).toEqual([])
      }))

    test("resumeBatch resumes only errored programs matching the filter; a live lease is left alone", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const programs = (yield* repository.insertMany(
          Array.from({ length: 4 }, () => newProgram())
        )).map((entry) => entry.program)
        yield* finishOne(programs[0]!)
        const running = yield* claimed({ runId: programs[1]!.runId, step: 0 })
        yield* repository.cancel(programs[1]!.runId, "stop")
        const failed = yield* claimed({ runId: programs[2]!.runId, step: 0 })
        yield* repository.fail(leaseOf(failed), "boom")

        const resumed = yield* repository.resumeBatch({ stepRetryCountGte: 0 }, { afterId: 0, limit: 10 })
        expect(resumed.map((p) => p.runId).sort()).toEqual([programs[1]!.runId, programs[2]!.runId].sort())
        expect(yield* get(programs[1]!.runId)).toMatchObject({ erroredAt: null, lockedBy: owner })
        expect(yield* get(programs[2]!.runId)).toMatchObject({ erroredAt: null, lockedBy: null, errorMessage: null })
        expect((yield* get(programs[0]!.runId)).finishedAt).toBeInstanceOf(Date)
        expect(yield* repository.extendLease(leaseOf(running), lease)).toBe("held")
        expect(yield* repository.resumeBatch({}, { afterId: 0, limit: 10 })).toEqual([])
        expect(Option.isSome(yield* claim({ runId: programs[2]!.runId, step: 0 }))).toBe(true)

        yield* repository.cancel(programs[3]!.runId, "x")
        expect(yield* repository.resumeBatch({ job: "second" }, { afterId: 0, limit: 10 })).toEqual([])
        expect(yield* repository.resumeBatch({ job: "first" }, { afterId: programs[3]!.id, limit: 10 })).toEqual([])
        expect((yield* repository.resumeBatch({ job: "first" }, { afterId: 0, limit: 10 })).map((p) => p.runId))
          .toEqual([programs[3]!.runId])
      }))

    test("pruneBatch deletes finished and errored programs older than the cutoff, in bounded batches, never one in progress", () =>
      Effect.gen(function*() {
        const repository = yield* repo
        const programs = (yield* repository.insertMany(
          Array.from({ length: 6 }, () => newProgram({ jobs: ["only"] }))
        )).map((entry) => entry.program)
        for (const program of programs.slice(0, 3)) yield* finishOne(program)
        yield* repository.cancel(programs[3]!.runId, "x")
        const failed = yield* claimed({ runId: programs[4]!.runId, step: 0 })
        yield* repository.fail(leaseOf(failed), "boom")
        const rows = yield* Effect.forEach(programs, (program) => get(program.runId))
        const finishedCutoff = new Date(Math.max(...rows.slice(0, 3).map((p) => p.finishedAt!.getTime())) + 1)
        const erroredCutoff = new Date(Math.max(...rows.slice(3, 5).map((p) => p.erroredAt!.getTime())) + 1)
        const early = new Date(Math.min(...rows.slice(0, 3).map((p) => p.finishedAt!.getTime())))

        expect(yield* repository.countPrunable("finished", early)).toBe(0)
        expect(yield* repository.countPrunable("finished", finishedCutoff)).toBe(3)
        expect(yield* repository.countPrunable("errored", erroredCutoff)).toBe(2)
        expect(yield* repository.pruneBatch("finished", early, 10)).toBe(0)
        expect(yield* repository.pruneBatch("finished", finishedCutoff, 2)).toBe(2)
        expect(yield* repository.pruneBatch("finished", finishedCutoff, 2)).toBe(1)
        expect(yield* repository.pruneBatch("finished", finishedCutoff, 2)).toBe(0)
        // The future: still nothing in progress.
        const future = new Date(Date.now() + 3_600_000)
        expect(yield* repository.pruneBatch("errored", future, 10)).toBe(2)
        expect(yield* repository.pruneBatch("finished", future, 10)).toBe(0)
        const left = yield* repository.list({ limit: 100 })
        expect(left.map((p) => p.runId)).toEqual([programs[5]!.runId])
      }))
  })
}
