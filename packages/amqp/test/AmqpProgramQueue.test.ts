import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Layer, Logger, Metric, Option, type Scope } from "effect"
import {
  Executor,
  ExecutorConfig,
  Job,
  JobContext,
  JobLibrary,
  ProgramExecutor,
  ProgramQueue,
  ProgramRepository
} from "@program-executor/core"
import { randomUUID } from "node:crypto"
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"
import { uniqueNamespace } from "../../core/test/conformance/ProgramQueueConformance.js"
import { describeWithService } from "../../core/test/utils/services.js"
import { delayBucket, delayQueueExpiry } from "../src/internal/delayBuckets.js"
import { brokerConnectionId, deleteQueues, eventually, inspectQueue, rabbitLayer, rawChannel } from "./utils.js"
import { execFile } from "node:child_process"
import { promisify } from "node:util"

const claim = { owner: "test", leaseFor: Duration.minutes(1) }

describe("delay buckets", () => {
  it("round up to 1-2-5 steps, never early, at most 2.5x late", () => {
    expect([0, -5, 1, 2, 3, 7, 10, 11, 120, 999, 1000, 1001, 60_000, 61_000].map(delayBucket)).toEqual(
      [0, 0, 1, 2, 5, 10, 10, 20, 200, 1000, 1000, 2000, 100_000, 100_000]
    )
    for (let millis = 1; millis < 10_000_000; millis = Math.ceil(millis * 1.37)) {
      expect(delayBucket(millis)).toBeGreaterThanOrEqual(millis)
      expect(delayBucket(millis)).toBeLessThanOrEqual(millis * 2.5)
      // A delay queue never expires while a message can still be in it.
      expect(delayQueueExpiry(delayBucket(millis))).toBeGreaterThan(delayBucket(millis))
    }
    expect(delayBucket(1e12)).toBe(4_294_967_295)
  })
})

/** Log lines of the test, to check what is logged and what never is. */
const captureLogs = () => {
  const lines: Array<{ level: string; message: string; annotations: Record<string, unknown> }> = []
  const logger = Logger.make(({ annotations, logLevel, message }) => {
    lines.push({
      level: logLevel.label,
      message: (Array.isArray(message) ? message : [message]).map(String).join(" "),
      annotations: Object.fromEntries(annotations)
    })
  })
  return { lines, layer: Logger.replace(Logger.defaultLogger, logger) }
}

const queueTypes = Effect.promise(() =>
  promisify(execFile)("rabbitmqctl", ["-q", "list_queues", "name", "durable", "arguments", "--formatter", "json"])
).pipe(
  Effect.map(({ stdout }) =>
    new Map(
      (JSON.parse(stdout) as Array<{ name: string; durable: boolean; arguments: Array<[string, string, unknown]> }>)
        .map((queue) => [queue.name, { durable: queue.durable, arguments: Object.fromEntries(queue.arguments.map(([key, , value]) => [key, value])) }])
    )
  )
)

describeWithService("AMQP_URL", "AmqpProgramQueue on RabbitMQ", (url) => {
  const withQueue = <A, E>(
    body: (queueName: string) => Effect.Effect<A, E, ProgramQueue | ProgramRepository | AmqpConnection.AmqpConnection | Scope.Scope>,
    options: Partial<AmqpProgramQueue.AmqpProgramQueueOptions> = {}
  ) => {
    const queueName = uniqueNamespace("amqp")
    return Effect.scoped(body(queueName)).pipe(Effect.provide(rabbitLayer(url, { ...options, queueName })))
  }

  it.live("declares a durable queue and publishes persistent messages, confirmed before publish returns", () =>
    withQueue((queueName) =>
      Effect.gen(function*() {
        const queue = yield* ProgramQueue
        const runId = randomUUID()
        yield* queue.publish({ runId, step: 3 })
        // Confirmed means enqueued: visible at once, no polling.
        expect((yield* inspectQueue(url, queueName)).messageCount).toBe(1)
        const declared = (yield* queueTypes).get(queueName)
        expect(declared?.durable).toBe(true)
        const channel = yield* rawChannel(url)
        const message = yield* Effect.promise(() => channel.get(queueName, { noAck: true }))
        expect(message).not.toBe(false)
        if (message === false) return
        expect(message.properties.deliveryMode).toBe(2)
        expect(JSON.parse(message.content.toString())).toEqual({ runId, step: 3 })
      })))

  it.live("publishes concurrently through one long-lived confirm channel", () =>
    withQueue((queueName) =>
      Effect.gen(function*() {
        const queue = yield* ProgramQueue
        yield* Effect.forEach(Array.from({ length: 50 }, (_, step) => step), (step) =>
          queue.publish({ runId: randomUUID(), step }), { concurrency: 10, discard: true })
        yield* Effect.forEach(Array.from({ length: 10 }, (_, step) => step), (step) =>
          queue.publish({ runId: randomUUID(), step }), { discard: true })
        expect((yield* inspectQueue(url, queueName)).messageCount).toBe(60)
        const connection = yield* brokerConnectionId
        const { stdout } = yield* Effect.promise(() =>
          promisify(execFile)("rabbitmqctl", ["-q", "list_channels", "connection", "confirm"])
        )
        const ours = stdout.split("\n").map((line) => line.trim().split(/\s+/)).filter(([pid]) => pid === connection)
        expect(ours).toEqual([[connection, "true"]])
      })))

  it.live("a queue deleted under the publisher is declared again: the returned message is published again", () =>
    withQueue((queueName) =>
      Effect.gen(function*() {
        const queue = yield* ProgramQueue
        yield* queue.publish({ runId: randomUUID(), step: 0 })
        yield* deleteQueues(url, [queueName])
        const runId = randomUUID()
        yield* queue.publish({ runId, step: 0 })
        expect((yield* inspectQueue(url, queueName)).messageCount).toBe(1)
        const channel = yield* rawChannel(url)
        const message = yield* Effect.promise(() => channel.get(queueName, { noAck: true }))
        expect(message && JSON.parse(message.content.toString())).toEqual({ runId, step: 0 })
      })))

  it.live("delays through a TTL queue per bucket that dead-letters back, declared to expire when idle after its TTL", () =>
    withQueue((queueName) =>
      Effect.gen(function*() {
        const queue = yield* ProgramQueue
        const runId = randomUUID()
        const subscription = yield* queue.subscribe({ prefetch: 1, claim })
        const startedAt = Date.now()
        yield* queue.publish({ runId, step: 0 }, { delay: "120 millis" })
        const delayQueue = AmqpProgramQueue.delayQueueName(queueName, 200)
        // As the broker reports it. The expiry is checked against what it must do, not against the function that
        // computes it: outlive the TTL (an expiry sooner would delete a queue still holding a message), and not by
        // much (idle buckets must go away; an hour is far above the minute it is today).
        const declared = (yield* queueTypes).get(delayQueue)
        expect(declared).toEqual({
          durable: true,
          arguments: {
            "x-message-ttl": 200,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": queueName,
            "x-expires": expect.any(Number)
          }
        })
        const expires = declared!.arguments["x-expires"] as number
        expect(expires).toBeGreaterThan(200)
        expect(expires).toBeLessThanOrEqual(Duration.toMillis("1 hour"))
        const delivery = yield* subscription.take.pipe(Effect.timeout("10 seconds"))
        expect(Date.now() - startedAt).toBeGreaterThanOrEqual(200)
        expect(delivery.message).toEqual({ runId, step: 0 })
        yield* delivery.ack
      })))

  it.live("acks, logs once (truncated) and counts malformed messages, and keeps consuming", () => {
    const logs = captureLogs()
    return withQueue((queueName) =>
      Effect.gen(function*() {
        const queue = yield* ProgramQueue
        const counter = Metric.tagged(AmqpProgramQueue.poisonMessages, "queue", queueName)
        const before = (yield* Metric.value(counter)).count
        const channel = yield* rawChannel(url)
        const valid = { runId: randomUUID(), step: 1 }
        const bodies = [
          "not json at all",
          JSON.stringify({ runId: 42, step: 0 }),
          JSON.stringify({ runId: "x", step: -1 }),
          JSON.stringify({ runId: "y".repeat(2_000_000), step: 0 }),
          JSON.stringify(valid)
        ]
        const delivery = yield* Effect.scoped(Effect.gen(function*() {
          // Subscribing declares the queue; raw messages sent before would have had nowhere to go.
          const subscription = yield* queue.subscribe({ prefetch: 2, claim })
          for (const body of bodies) channel.sendToQueue(queueName, Buffer.from(body), { persistent: true })
          const delivery = yield* subscription.take.pipe(Effect.timeout("10 seconds"))
          yield* delivery.ack
          return delivery
        }))
        expect(delivery.message).toEqual(valid)
        expect((yield* Metric.value(counter)).count - before).toBe(4)
        const poisonLogs = logs.lines.filter((line) => line.message.includes("malformed message"))
        expect(poisonLogs.length).toBe(4)
        for (const line of poisonLogs) {
          expect(line.level).toBe("ERROR")
          expect(String(line.annotations.body).length).toBeLessThanOrEqual(201)
        }
        expect(poisonLogs[0]!.annotations.body).toBe("not json at all")
        // All acked: nothing came back when the subscription's channel closed.
        expect((yield* inspectQueue(url, queueName)).messageCount).toBe(0)
      }).pipe(Effect.provide(logs.layer))
    )
  })

  it.live("a publish the broker never confirms fails with a QueueError that names no password", () => {
    const logs = captureLogs()
    return Effect.gen(function*() {
      const queue = yield* ProgramQueue
      const error = yield* queue.publish({ runId: randomUUID(), step: 0 }).pipe(Effect.flip)
      expect(error._tag).toBe("QueueError")
      expect(error.message).toContain("127.0.0.1:1")
      expect(error.message).not.toContain("s3cret")
      expect(logs.lines.length).toBeGreaterThan(0)
      expect(logs.lines.some((line) => JSON.stringify(line).includes("s3cret"))).toBe(false)
    }).pipe(
      Effect.provide(
        AmqpProgramQueue.layer({ queueName: uniqueNamespace("amqp"), publishTimeout: "400 millis" }).pipe(
          Layer.provide(AmqpConnection.layer({ url: "amqp://guest:s3cret@127.0.0.1:1" }))
        )
      ),
      Effect.provide(logs.layer)
    )
  })

  it.live("the executor drops a wake-up for an unknown runId (acked) and keeps running programs", () =>
    withQueue((queueName) =>
      Effect.gen(function*() {
        const dropped = Metric.counter("program_executor_wakeups_dropped_total", { incremental: true })
        const before = (yield* Metric.value(dropped)).count
        const queue = yield* ProgramQueue
        yield* queue.publish({ runId: randomUUID(), step: 0 })
        const ran: Array<string> = []
        const runId = yield* Effect.scoped(Effect.gen(function*() {
          yield* Effect.forkScoped(Executor.run)
          const runId = yield* ProgramExecutor.createProgram({ jobs: ["noop", "noop"] })
          const repository = yield* ProgramRepository
          yield* eventually(
            "the program finished",
            repository.get(runId).pipe(Effect.map((program) => Option.isSome(program) && program.value.finishedAt !== null))
          )
          yield* eventually("the unknown wake-up was dropped", Effect.map(Metric.value(dropped), (state) => state.count > before))
          return runId
        }).pipe(Effect.provide(Layer.mergeAll(
          ProgramExecutor.layer,
          JobLibrary.layer(Job.make("noop", Effect.flatMap(JobContext, (ctx) => Effect.sync(() => ran.push(`${ctx.runId}/${ctx.step}`))))),
          ExecutorConfig.layer({ concurrency: 2, shutdownGrace: Duration.seconds(1) })
        ))))
        // The known program ran each of its steps once; the unknown wake-up ran nothing.
        expect(ran).toEqual([`${runId}/0`, `${runId}/1`])
        const program = Option.getOrThrow(yield* (yield* ProgramRepository).get(runId))
        expect([program.step, program.erroredAt]).toEqual([1, null])
        expect((yield* Metric.value(dropped)).count - before).toBeGreaterThanOrEqual(1)
        expect((yield* inspectQueue(url, queueName)).messageCount).toBe(0)
      })))
})
