/**
 * The executor's conformance suite on the production pairing, PostgreSQL + RabbitMQ: the executor claims every step
 * itself (the SQL queue claims while it dequeues), and wake-ups are real broker messages, duplicates and malformed
 * ones included.
 */
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"
import { Effect, Layer } from "effect"
import { deleteQueues } from "../packages/amqp/test/utils.js"
import { executorConformance } from "../packages/core/test/conformance/ExecutorConformance.js"
import { describeWithService } from "../packages/core/test/utils/services.js"
import { repository } from "../packages/sql/test/utils.js"

describeWithService("DATABASE_URL", "PostgreSQL", (databaseUrl) => {
  describeWithService("AMQP_URL", "RabbitMQ", (amqpUrl) => {
    executorConformance("postgres + rabbitmq", (namespace) => {
      const queues = [namespace, ...[200, 500, 1000].map((ms) => AmqpProgramQueue.delayQueueName(namespace, ms))]
      const removeQueues = Layer.scopedDiscard(Effect.addFinalizer(() => deleteQueues(amqpUrl, queues)))
      const queue = AmqpProgramQueue.layer({ queueName: namespace }).pipe(
        Layer.provide(AmqpConnection.layer({ url: amqpUrl, connectionName: `executor conformance ${namespace}` })),
        Layer.provideMerge(removeQueues)
      )
      return Layer.merge(repository("pg", databaseUrl)(namespace), queue)
    })
  })
})
