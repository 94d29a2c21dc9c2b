/**
 * Transactional enqueue with RabbitMQ as the queue, on SQLite, PostgreSQL and MariaDB (see the suite): the wake-up
 * is a broker message, so one sent before the commit is refused by the worker's claim and the program would wait
 * for the sweeper (minutes here).
 */
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"
import { describe } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { deleteQueues } from "../packages/amqp/test/utils.js"
import { describeWithService } from "../packages/core/test/utils/services.js"
import { transactionalEnqueueSuite } from "../packages/sql/test/support/transactionalEnqueue.js"

describeWithService("AMQP_URL", "transactional enqueue, RabbitMQ", (amqpUrl) => {
  const rabbitQueue = (namespace: string) => {
    const removeQueues = Layer.scopedDiscard(
      Effect.addFinalizer(() =>
        deleteQueues(amqpUrl, [namespace, ...[200, 500, 1000].map((ms) => AmqpProgramQueue.delayQueueName(namespace, ms))])
      )
    )
    return AmqpProgramQueue.layer({ queueName: namespace }).pipe(
      Layer.provide(AmqpConnection.layer({ url: amqpUrl, connectionName: `transactional enqueue ${namespace}` })),
      Layer.provideMerge(removeQueues)
    )
  }
  describe("SQLite", () => transactionalEnqueueSuite("sqlite", undefined, rabbitQueue))
  describeWithService("DATABASE_URL", "PostgreSQL", (url) => transactionalEnqueueSuite("pg", url, rabbitQueue))
  describeWithService("MYSQL_URL", "MariaDB", (url) => transactionalEnqueueSuite("mysql", url, rabbitQueue))
})
