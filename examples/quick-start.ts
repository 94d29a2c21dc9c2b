/**
 * The smallest complete program executor: two jobs, one program, a worker, all in one process on the embedded
 * default (a SQLite file, the table as the queue). Run: node --import tsx examples/quick-start.ts
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Executor, Job, JobContext, JobLibrary, ProgramExecutor, RetryableError } from "@program-executor/core"
import { SqlProgramExecutor } from "@program-executor/sql"
import { Effect, Layer } from "effect"

const fetchOrders = Job.make("fetch_orders", Effect.gen(function*() {
  const ctx = yield* JobContext                       // runId, step, attempt, programData, jobData
  const { page = 0 } = yield* ctx.jobData.get         // this job's stored progress ({} at first)
  if (ctx.attempt === 1) return yield* new RetryableError({ message: "shop API busy" }) // retried with backoff
  yield* ctx.jobData.merge({ page: page + 1, fetched: 42 })
}))

const sendReport = Job.make("send_report", Effect.gen(function*() {
  const ctx = yield* JobContext
  yield* Effect.log(`report for shop ${ctx.programData.shop} sent`)
}))

const main = Effect.gen(function*() {
  const runId = yield* ProgramExecutor.createProgram({ jobs: ["fetch_orders", "send_report"], programData: { shop: 1 } })
  yield* Effect.forkScoped(Executor.run)              // the worker: in this process here, usually its own process
  while (true) {
    const program = yield* ProgramExecutor.get(runId).pipe(Effect.flatMap(Effect.orDie))
    if (program.finishedAt !== null || program.erroredAt !== null) return yield* Effect.log("done", program.jobData)
    yield* Effect.sleep("100 millis")
  }
}).pipe(Effect.scoped)

const storage = SqlProgramExecutor.layerEmbedded({ filename: "./quick-start.db" })
main.pipe(Effect.provide(JobLibrary.layer(fetchOrders, sendReport).pipe(Layer.provideMerge(storage))), NodeRuntime.runMain)
