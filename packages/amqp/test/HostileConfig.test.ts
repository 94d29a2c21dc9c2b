/** Configuration that used to hang a worker (a bad URL, a bad queue name) fails when the layer is built. */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"

const build = <A, E>(layer: Layer.Layer<A, E>) => Effect.flip(Layer.build(layer).pipe(Effect.scoped))

describe("hostile AMQP configuration", () => {
  it.effect("a raw / ? # in the password is a typed error at build, naming the fix, not the password", () =>
    Effect.gen(function*() {
      for (const url of ["amqp://guest:12/secret@127.0.0.1:5672", "amqp://guest:12?secret@127.0.0.1", "amqp://guest:ab#secret@127.0.0.1"]) {
        const error = yield* build(AmqpConnection.layer({ url }))
        expect(error._tag).toBe("InvalidAmqpUrlError")
        expect(error.message).toContain("percent-encoded")
        expect(error.message).not.toContain("secret")
      }
      const wrongScheme = yield* build(AmqpConnection.layer("http://guest:secret@127.0.0.1"))
      expect(wrongScheme.message).toContain("amqp: or amqps:")
      expect(wrongScheme.message).not.toContain("secret")
    }))

  it.effect("the same password percent-encoded is accepted", () =>
    Layer.build(AmqpConnection.layer({ url: `amqp://guest:${encodeURIComponent("12/se?c#ret")}@127.0.0.1:1` })).pipe(
      Effect.scoped
    ))

  it.effect("an empty, amq. or malformed queue name is a typed error at build, naming the rule", () =>
    Effect.gen(function*() {
      const connection = AmqpConnection.layer({ url: "amqp://guest:guest@127.0.0.1:1" })
      const cases: Array<[string, string]> = [
        ["", "must not be empty"],
        ["amq.programs", "reserved by RabbitMQ"],
        ["my queue", "must match"],
        ["q".repeat(AmqpProgramQueue.maxQueueNameLength + 1), "at most"]
      ]
      for (const [queueName, rule] of cases) {
        const error = yield* build(AmqpProgramQueue.layer({ queueName }).pipe(Layer.provide(connection)))
        expect(error._tag).toBe("InvalidQueueNameError")
        expect(error.message).toContain(rule)
      }
    }))
})
