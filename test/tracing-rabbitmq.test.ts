/**
 * Tracing on PostgreSQL + RabbitMQ: with `maxConsecutiveSteps: 1` every step goes through the broker, so each step's
 * span links to the one before it only through the wake-up's `traceparent`.
 */
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"
import { Effect, Layer } from "effect"
import { deleteQueues } from "../packages/amqp/test/utils.js"
import { tracingConformance } from "../packages/core/test/conformance/TracingConformance.js"
import { describeWithService } from "../packages/core/test/utils/services.js"
import { repository } from "../packages/sql/test/utils.js"

let counter = 0
const namespace = () => `pe_trace_${Date.now().toString(36)}_${counter++}_${Math.random().toString(36).slice(2, 6)}`

describeWithService("DATABASE_URL", "PostgreSQL", (databaseUrl) => {
  describeWithService("AMQP_URL", "RabbitMQ", (amqpUrl) => {
    tracingConformance("PostgreSQL + rabbitmq", () => {
      const name = namespace()
      const queues = [name, ...[200, 500, 1000].map((ms) => AmqpProgramQueue.delayQueueName(name, ms))]
      const removeQueues = Layer.scopedDiscard(Effect.addFinalizer(() => deleteQueues(amqpUrl, queues)))
      const queue = AmqpProgramQueue.layer({ queueName: name }).pipe(
        Layer.provide(AmqpConnection.layer({ url: amqpUrl, connectionName: `tracing ${name}` })),
        Layer.provideMerge(removeQueues)
      )
      return Layer.merge(repository("pg", databaseUrl)(name), queue)
    })
  })
})
