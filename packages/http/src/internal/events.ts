import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { type ProgramEvent, ProgramEvents } from "@program-executor/core"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Stream from "effect/Stream"

/** An event as JSON: durations in milliseconds. */
const encode = (event: ProgramEvent): string =>
  JSON.stringify(event, (_key, value) => Duration.isDuration(value) ? Duration.toMillis(value) : value)

/**
 * `ProgramEvents` as server-sent events, one `event: <tag>` per program event. The first line is a comment, so a
 * client knows it is subscribed (no event published after it is missed); a comment every 15 s keeps proxies from
 * closing an idle stream.
 */
export const eventStream = Effect.gen(function*() {
  const events = yield* ProgramEvents
  const body = Stream.unwrapScoped(Effect.map(events.subscribe, (subscribed) =>
    subscribed.pipe(
      Stream.map((event) => `event: ${event._tag}\ndata: ${encode(event)}\n\n`),
      Stream.merge(Stream.tick("15 seconds").pipe(Stream.drop(1), Stream.as(": keep-alive\n\n")), {
        haltStrategy: "left"
      }),
      // Sent once the subscription exists: from here on, no event is missed.
      (stream) => Stream.concat(Stream.make(": subscribed\n\n"), stream)
    ))).pipe(Stream.encodeText)
  return HttpServerResponse.stream(body, {
    contentType: "text/event-stream",
    headers: { "cache-control": "no-cache", "x-accel-buffering": "no" }
  })
})
