import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as ScheduleDecision from "effect/ScheduleDecision"
import * as ScheduleIntervals from "effect/ScheduleIntervals"

/**
 * The delay a schedule gives before its n-th recurrence (n >= 1), or `None` when it stops earlier. The number of
 * failures is stored in the database, not in a running schedule, so the schedule is replayed from its start; jitter
 * still applies, since each step draws from `Random`.
 */
export const nthDelay = (
  schedule: Schedule.Schedule<unknown, unknown>,
  n: number
): Effect.Effect<Option.Option<Duration.Duration>> =>
  Effect.gen(function*() {
    const start = yield* Clock.currentTimeMillis
    let now = start
    let previous = start
    let state = schedule.initial
    for (let i = 0; i < n; i++) {
      const [next, , decision] = yield* schedule.step(now, undefined, state)
      if (ScheduleDecision.isDone(decision)) return Option.none()
      state = next
      previous = now
      now = ScheduleIntervals.start(decision.intervals)
    }
    return Option.some(Duration.millis(Math.max(0, now - previous)))
  })

/**
 * `Effect.retry(effect, schedule)`, with the retry set up only once the effect has failed: `Effect.retry` builds a
 * schedule driver on every call, a cost every successful database write would otherwise pay. The first failure is
 * the schedule's first input, exactly as with `Effect.retry`.
 */
export const retryOnFailure = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  schedule: Schedule.Schedule<unknown, unknown>
): Effect.Effect<A, E, R> =>
  Effect.catchAll(effect, (first) =>
    Effect.flatMap(Schedule.driver(schedule), (driver) => {
      const after = (error: E): Effect.Effect<A, E, R> =>
        Effect.matchEffect(driver.next(error), {
          onFailure: () => Effect.fail(error),
          onSuccess: () => Effect.catchAll(effect, after)
        })
      return after(first)
    }))
