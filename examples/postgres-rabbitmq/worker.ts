/**
 * A worker process: PostgreSQL holds the programs, RabbitMQ carries the wake-ups. Start as many as you like, on as
 * many machines; SIGINT/SIGTERM lets running steps finish, then exits.
 *
 *   DATABASE_URL=postgres://… AMQP_URL=amqp://… node --import tsx examples/postgres-rabbitmq/worker.ts
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"
import { Executor, ExecutorConfig, JobLibrary, ProgramExecutor } from "@program-executor/core"
import { SqlDatabase, SqlProgramRepository } from "@program-executor/sql"
import { Config, Effect, Layer } from "effect"
import { jobs } from "./jobs.js"

export const StorageLive = Layer.mergeAll(
  SqlProgramRepository.layer({ tableName: "example_programs" }).pipe(
    Layer.provide(Layer.unwrapEffect(Effect.map(Config.string("DATABASE_URL"), (url) => SqlDatabase.layer(url))))
  ),
  AmqpProgramQueue.layer({ queueName: "example-programs" }).pipe(
    Layer.provide(AmqpConnection.layerConfig({ url: Config.redacted("AMQP_URL") }))
  )
)

/** ProgramExecutor (to create programs, also from inside jobs) on PostgreSQL + RabbitMQ. */
export const ProgramExecutorLive = ProgramExecutor.layer.pipe(Layer.provideMerge(StorageLive))

const WorkerLive = Layer.mergeAll(
  JobLibrary.layer(...jobs),
  ExecutorConfig.layerFromEnv() // PE_CONCURRENCY, PE_MAX_ATTEMPTS, … (see the README)
).pipe(Layer.provideMerge(ProgramExecutorLive))

if (import.meta.url === `file://${process.argv[1]}`) {
  Executor.run.pipe(Effect.provide(WorkerLive), NodeRuntime.runMain)
}
