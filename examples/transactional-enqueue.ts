/**
 * Transactional enqueue: an order row and the program that ships it are committed together, in the application's own
 * `sql.withTransaction`, or not at all. The wake-up goes out after the commit, so a worker starts the program at once.
 * SQLite by default (`PE_EXAMPLE_DB`, default ./transactional-enqueue.db); PostgreSQL (or MySQL/MariaDB) when
 * DATABASE_URL is set. Run: node --import tsx examples/transactional-enqueue.ts
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { SqlClient } from "@effect/sql"
import { Executor, Job, JobContext, JobLibrary, ProgramExecutor } from "@program-executor/core"
import { SqlDatabase, SqlProgramQueue, SqlProgramRepository } from "@program-executor/sql"
import { Data, Effect, Layer, Schedule } from "effect"
import { randomUUID } from "node:crypto"

class OutOfStock extends Data.TaggedError("OutOfStock")<{ readonly item: string }> {}

const shipOrder = Job.make("ship_order", Effect.gen(function*() {
  const ctx = yield* JobContext
  yield* Effect.log(`shipping order ${ctx.programData.orderId}`)
}))

/** The order and its program in one transaction: both or neither. */
const placeOrder = (item: string, inStock: boolean) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    return yield* sql.withTransaction(Effect.gen(function*() {
      const orderId = randomUUID()
      const runId = yield* ProgramExecutor.createProgram({ jobs: ["ship_order"], programData: { orderId } })
      yield* sql`INSERT INTO example_orders (id, item, run_id) VALUES (${orderId}, ${item}, ${runId})`
      if (!inStock) return yield* new OutOfStock({ item })    // rolls back the order and the program
      return { orderId, runId }
    }))
  })

const main = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`CREATE TABLE IF NOT EXISTS example_orders (id VARCHAR(64) PRIMARY KEY, item VARCHAR(200) NOT NULL, run_id VARCHAR(64) NOT NULL)`
  yield* Effect.forkScoped(Executor.run)              // the worker: usually its own process

  const { orderId, runId } = yield* placeOrder("teapot", true)
  const finished = yield* ProgramExecutor.get(runId).pipe(
    Effect.flatMap(Effect.orDie),
    Effect.filterOrFail((program) => program.finishedAt !== null, () => "not yet"),
    Effect.retry(Schedule.spaced("20 millis")),
    Effect.timeout("10 seconds")
  )
  yield* Effect.log(`order ${orderId} committed with program ${runId}: finished at ${finished.finishedAt?.toISOString()}`)

  const refused = yield* placeOrder("unicorn", false).pipe(
    Effect.flip,
    Effect.filterOrDie((error): error is OutOfStock => error._tag === "OutOfStock", () => new Error("not refused"))
  )
  const orders = yield* sql<{ readonly run_id: string }>`SELECT run_id FROM example_orders`
  const withOrder = new Set(orders.map((order) => order.run_id))
  const programs = yield* ProgramExecutor.list({ limit: 1000 })
  const withoutOrder = programs.filter((program) => !withOrder.has(program.runId)).length
  yield* Effect.log(`order for ${refused.item} rolled back: ${withoutOrder} programs without an order`)
  if (withoutOrder > 0) return yield* Effect.die(new Error("a rolled-back order left its program behind"))
}).pipe(Effect.scoped)

const url = process.env.DATABASE_URL ?? `sqlite:${process.env.PE_EXAMPLE_DB ?? "./transactional-enqueue.db"}`
const tables = { tableName: "example_tx_programs" }
const services = ProgramExecutor.layer.pipe(
  Layer.provideMerge(Layer.merge(SqlProgramRepository.layer(tables), SqlProgramQueue.layer(tables))),
  Layer.provideMerge(SqlDatabase.layer(url))
)
main.pipe(Effect.provide(JobLibrary.layer(shipOrder).pipe(Layer.provideMerge(services))), NodeRuntime.runMain)
