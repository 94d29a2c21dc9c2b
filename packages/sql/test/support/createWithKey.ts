/**
 * A separate process for the idempotency test: opens the table, prints "ready", waits for a line on stdin, then
 * creates `PE_COUNT` programs at once under one idempotency key and prints their runIds as JSON.
 */
import { ProgramExecutor } from "@program-executor/core"
import { Effect } from "effect"
import { createInterface } from "node:readline"
import { SqlProgramExecutor } from "../../src/index.js"

const env = (name: string) => {
  const value = process.env[name]
  if (value === undefined) throw new Error(`${name} is not set`)
  return value
}

const go = Effect.async<void>((resume) => {
  const lines = createInterface({ input: process.stdin })
  lines.once("line", () => {
    lines.close()
    resume(Effect.void)
  })
})

const program = Effect.gen(function*() {
  const executor = yield* ProgramExecutor
  yield* Effect.sync(() => process.stdout.write("ready\n"))
  yield* go
  const runIds = yield* Effect.forEach(
    Array.from({ length: Number(env("PE_COUNT")) }),
    (_, n) => executor.createProgram({ jobs: ["once"], programData: { n }, idempotencyKey: env("PE_KEY") }),
    { concurrency: "unbounded" }
  )
  yield* Effect.sync(() => process.stdout.write(`${JSON.stringify(runIds)}\n`))
})

Effect.runPromise(
  program.pipe(
    Effect.provide(SqlProgramExecutor.layer({ url: env("PE_URL"), tableName: env("PE_TABLE"), pollInterval: "1 hour" }))
  )
).then(
  () => process.exit(0),
  (error) => {
    process.stderr.write(`${String(error)}\n`)
    process.exit(1)
  }
)
