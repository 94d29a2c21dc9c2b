/**
 * The executor's conformance suite on the production pairings, PostgreSQL or MariaDB + RabbitMQ: the executor claims
 * every step itself (the SQL queue claims while it dequeues), and wake-ups are real broker messages, duplicates and
 * malformed ones included.
 */
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"
import { Effect, Layer } from "effect"
import { deleteQueues } from "../packages/amqp/test/utils.js"
import { executorConformance } from "../packages/core/test/conformance/ExecutorConformance.js"
import { describeWithService, type ServiceVariable } from "../packages/core/test/utils/services.js"
import { type Backend, repository } from "../packages/sql/test/utils.js"

const databases: ReadonlyArray<readonly [ServiceVariable, string, Backend]> = [
  ["DATABASE_URL", "PostgreSQL", "pg"],
  ["MYSQL_URL", "MariaDB", "mysql"]
]

for (const [variable, name, backend] of databases) {
  describeWithService(variable, name, (databaseUrl) => {
    describeWithService("AMQP_URL", "RabbitMQ", (amqpUrl) => {
      executorConformance(`${name} + rabbitmq`, (namespace) => {
        const queues = [namespace, ...[200, 500, 1000].map((ms) => AmqpProgramQueue.delayQueueName(namespace, ms))]
        const removeQueues = Layer.scopedDiscard(Effect.addFinalizer(() => deleteQueues(amqpUrl, queues)))
        const queue = AmqpProgramQueue.layer({ queueName: namespace }).pipe(
          Layer.provide(AmqpConnection.layer({ url: amqpUrl, connectionName: `executor conformance ${namespace}` })),
          Layer.provideMerge(removeQueues)
        )
        return Layer.merge(repository(backend, databaseUrl)(namespace), queue)
      })
    })
  })
}
