/**
 * A producer process: creates programs and waits until every one has ended. It needs no job library, only the
 * storage. With `--workers N` it first starts N worker processes (and stops them at the end).
 *
 *   DATABASE_URL=postgres://… AMQP_URL=amqp://… node --import tsx examples/postgres-rabbitmq/producer.ts \
 *     [--programs 200] [--workers 3]
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { ProgramExecutor } from "@program-executor/core"
import { Effect } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import { ProgramExecutorLive } from "./worker.js"

const flag = (name: string, fallback: number) => {
  const index = process.argv.indexOf(`--${name}`)
  return index >= 0 ? Number(process.argv[index + 1]) : fallback
}
const programCount = flag("programs", 200)
const workerCount = flag("workers", 0)

const startWorkers = Effect.acquireRelease(
  Effect.sync(() =>
    Array.from({ length: workerCount }, (): ChildProcess =>
      spawn(process.execPath, ["--import", "tsx", fileURLToPath(new URL("./worker.ts", import.meta.url))], {
        stdio: ["ignore", "ignore", "inherit"]
      }))
  ),
  (workers) => Effect.sync(() => workers.forEach((worker) => worker.kill("SIGTERM")))
)

const main = Effect.gen(function*() {
  yield* startWorkers
  const started = Date.now()
  const runIds = yield* Effect.forEach(
    Array.from({ length: programCount }, (_, index) => index),
    (index) =>
      ProgramExecutor.createProgram({
        jobs: ["resize_image", "upload_image", "notify_owner"],
        programData: { image: `photo-${index}.jpg` }
      }),
    { concurrency: 16 }
  )
  yield* Effect.log(`created ${runIds.length} programs; waiting for them to end`)
  const pending = new Set(runIds)
  while (pending.size > 0) {
    for (const runId of pending) {
      const program = yield* ProgramExecutor.get(runId).pipe(Effect.flatMap(Effect.orDie))
      if (program.finishedAt !== null || program.erroredAt !== null) pending.delete(runId)
      else break
    }
    if (pending.size > 0) yield* Effect.sleep("200 millis")
  }
  const byWorker = new Map<unknown, number>()
  for (const runId of runIds) {
    const program = yield* ProgramExecutor.get(runId).pipe(Effect.flatMap(Effect.orDie))
    const worker = (program.jobData.resize_image as { worker?: number } | undefined)?.worker
    byWorker.set(worker, (byWorker.get(worker) ?? 0) + 1)
  }
  yield* Effect.log(`all ${runIds.length} programs ended in ${Date.now() - started} ms; by worker pid:`, Object.fromEntries(byWorker))
}).pipe(Effect.scoped)

main.pipe(Effect.provide(ProgramExecutorLive), NodeRuntime.runMain)
