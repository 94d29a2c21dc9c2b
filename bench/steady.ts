/**
 * `pnpm bench:steady [memory|embedded|pg] [programs] [rounds]`: the executor's steady-state cost in one process, the
 * A/B tool behind the "changes" figures of BENCHMARKS.md. Each round creates the programs first (untimed), then runs
 * one worker (concurrency `STEADY_CONCURRENCY`, default 16) until none is left in progress, and prints steps/s and the
 * process's CPU per step. The first round is warm-up. Unlike `pnpm bench`, creation never overlaps the run and the
 * queue always has work: it isolates the per-step cost of the executor and its storage.
 *
 * Compare two versions of a file by running this alternately with each, several times (`git stash` or copies),
 * and compare CPU per step, which other load on the machine disturbs far less than steps/s.
 */
import {
  Executor,
  ExecutorConfig,
  Job,
  JobLibrary,
  ProgramExecutor,
  ProgramQueue,
  ProgramRepository
} from "@program-executor/core"
import { SqlProgramExecutor } from "@program-executor/sql"
import { Duration, Effect, Fiber, Layer, Logger, LogLevel } from "effect"
import { rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import pg from "pg"

const [mode = "memory", programsArg = "3000", roundsArg = "4"] = process.argv.slice(2)
const programs = Number(programsArg)
const rounds = Number(roundsArg)
const concurrency = Number(process.env.STEADY_CONCURRENCY ?? 16)
const databaseUrl = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test"
const jobNames = ["a", "b", "c", "d", "e"]
const tableName = `steady_${process.pid}`
const sqliteFile = join(tmpdir(), `${tableName}.db`)

const storage = (): Layer.Layer<ProgramRepository | ProgramQueue | ProgramExecutor, unknown> => {
  switch (mode) {
    case "memory":
      return ProgramExecutor.layer.pipe(
        Layer.provideMerge(Layer.merge(ProgramRepository.layerMemory, ProgramQueue.layerMemory))
      )
    case "embedded":
      return SqlProgramExecutor.layerEmbedded({ filename: sqliteFile, tableName })
    case "pg":
      return SqlProgramExecutor.layer({ url: databaseUrl, tableName })
    default:
      throw new Error(`unknown mode ${mode}: memory, embedded or pg`)
  }
}

const main = Effect.gen(function*() {
  const executor = yield* ProgramExecutor
  for (let round = 0; round < rounds; round++) {
    yield* Effect.forEach(
      Array.from({ length: programs }),
      () => Effect.orDie(executor.createProgram({ jobs: jobNames })),
      { concurrency: 16, discard: true }
    )
    const cpu = process.cpuUsage()
    const started = performance.now()
    const worker = yield* Effect.fork(Executor.run)
    while ((yield* Effect.orDie(executor.list({ inProgressOnly: true, limit: 1 }))).length > 0) {
      yield* Effect.sleep(Duration.millis(5))
    }
    const seconds = (performance.now() - started) / 1000
    const used = process.cpuUsage(cpu)
    yield* Fiber.interrupt(worker)
    const steps = programs * jobNames.length
    console.log(
      `${mode} round ${round}${round === 0 ? " (warm-up)" : ""}: ${Math.round(steps / seconds)} steps/s, ` +
        `CPU ${((used.user + used.system) / steps).toFixed(1)} µs/step`
    )
  }
}).pipe(
  Effect.provide(
    Layer.mergeAll(
      JobLibrary.layer(...jobNames.map((name) => Job.make(name, Effect.void))),
      ExecutorConfig.layer({ concurrency, sweepInterval: Duration.minutes(10), shutdownGrace: Duration.seconds(5) })
    )
  ),
  Effect.provide(storage()),
  Logger.withMinimumLogLevel(LogLevel.Warning)
)

const cleanUp = async () => {
  for (const suffix of ["", "-wal", "-shm"]) rmSync(`${sqliteFile}${suffix}`, { force: true })
  if (mode !== "pg") return
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  await client.query(`DROP TABLE IF EXISTS ${tableName}`)
  await client.end()
}

Effect.runPromise(main as Effect.Effect<void, unknown>).finally(cleanUp).then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
