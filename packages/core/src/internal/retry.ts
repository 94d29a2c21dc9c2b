import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type * as Schedule from "effect/Schedule"
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
