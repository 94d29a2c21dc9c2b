/**
 * A real worker process for the end-to-end and fault suites: PostgreSQL + RabbitMQ, `Executor.run` under
 * `NodeRuntime.runMain` (SIGTERM/SIGINT = graceful shutdown, exit 0). Start it with
 * `node --import tsx test/support/worker.ts` (not through `pnpm run`, which does not forward signals).
 *
 * Environment:
 * - `DATABASE_URL`, `AMQP_URL`
 * - `PE_TABLE` (programs table), `PE_QUEUE` (queue name), `PE_EXECUTIONS_TABLE` (where jobs record each run; the
 *   test creates it: run_id, step, attempt, pid, job, started_at, finished_at)
 * - `PE_JOB_DURATION` (how long each job takes, default "50 millis")
 * - `PE_JOBS` (the job names, comma-separated, default `step_a,step_b,step_c`)
 * - `PE_DUPLICATE_PUBLISH=true`: every wake-up this worker publishes is published twice (duplicate delivery)
 * - `PE_CRASH_JOBS` (job names, comma-separated, each also in `PE_JOBS`): these record their start, then the whole
 *   process exits with code 1, the way a job that crashes its worker does (no outcome is ever recorded)
 * - `PE_STUBBORN_JOBS` (job names, comma-separated, each also in `PE_JOBS`): these record their start, then never end
 *   and ignore interruption (`Effect.uninterruptible(Effect.never)`), the way a job stuck in a finalizer or on a
 *   Promise that never settles does; empty or unset: every job ends normally
 * - the executor's `PE_*` settings (`PE_CONCURRENCY`, `PE_SHUTDOWN_GRACE`, `PE_STALE_AFTER`, `PE_SWEEP_INTERVAL`, …)
 *
 * Each job inserts a row when it starts and sets its `finished_at` when it ends.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"
import { Executor, ExecutorConfig, Job, JobContext, JobLibrary, RetryableError } from "@program-executor/core"
import { SqlDatabase, SqlProgramRepository } from "@program-executor/sql"
import { Config, Effect, Layer, Redacted } from "effect"
import pg from "pg"
import { duplicatingQueue } from "./duplicatingQueue.js"

class Recorder extends Effect.Tag("test/Recorder")<Recorder, pg.Pool>() {}

const settings = Config.all({
  databaseUrl: Config.redacted("DATABASE_URL"),
  tableName: Config.string("PE_TABLE"),
  queueName: Config.string("PE_QUEUE"),
  executionsTable: Config.string("PE_EXECUTIONS_TABLE"),
  jobDuration: Config.duration("PE_JOB_DURATION").pipe(Config.withDefault("50 millis")),
  jobNames: Config.array(Config.string(), "PE_JOBS").pipe(Config.withDefault(["step_a", "step_b", "step_c"])),
  duplicatePublish: Config.boolean("PE_DUPLICATE_PUBLISH").pipe(Config.withDefault(false)),
  crashJobs: Config.array(Config.string(), "PE_CRASH_JOBS").pipe(Config.withDefault<Array<string>>([])),
  // Read as text, so an empty value names no job (a normal worker started beside a stubborn one).
  stubbornJobs: Config.string("PE_STUBBORN_JOBS").pipe(
    Config.withDefault(""),
    Config.map((names) => names.split(",").map((name) => name.trim()).filter((name) => name !== ""))
  )
})

const WorkerLive = Layer.unwrapEffect(Effect.gen(function*() {
  const {
    crashJobs,
    databaseUrl,
    duplicatePublish,
    executionsTable,
    jobDuration,
    jobNames,
    queueName,
    stubbornJobs,
    tableName
  } = yield* settings
  if (!/^[a-z_][a-z0-9_]*$/i.test(executionsTable)) return yield* Effect.dieMessage("bad PE_EXECUTIONS_TABLE")

  // The recording uses its own small pool, so it does not depend on the repository's internals.
  const recorder = Layer.scoped(
    Recorder,
    Effect.acquireRelease(
      Effect.sync(() => new pg.Pool({ connectionString: Redacted.value(databaseUrl), max: 4 })),
      (pool) => Effect.promise(() => pool.end())
    )
  )
  const query = (text: string, values: Array<unknown>) =>
    Effect.flatMap(Recorder, (pool) =>
      Effect.tryPromise({
        try: () => pool.query(text, values),
        catch: (error) => new RetryableError({ message: `recording failed: ${String(error)}` })
      }))

  const recordingJob = (name: string) =>
    Job.make(name, Effect.gen(function*() {
      const ctx = yield* JobContext
      const started = yield* query(
        `INSERT INTO ${executionsTable} (run_id, step, attempt, pid, job, started_at)
         VALUES ($1, $2, $3, $4, $5, clock_timestamp()) RETURNING id`,
        [ctx.runId, ctx.step, ctx.attempt, process.pid, name]
      )
      // The row is committed before the exit: the test counts these runs.
      if (crashJobs.includes(name)) return yield* Effect.sync(() => process.exit(1))
      if (stubbornJobs.includes(name)) return yield* Effect.uninterruptible(Effect.never)
      yield* Effect.sleep(jobDuration)
      yield* query(`UPDATE ${executionsTable} SET finished_at = clock_timestamp() WHERE id = $1`, [started.rows[0].id])
    }))

  return Layer.mergeAll(
    SqlProgramRepository.layer({ tableName }),
    duplicatePublish
      ? duplicatingQueue.pipe(Layer.provide(AmqpProgramQueue.layer({ queueName })))
      : AmqpProgramQueue.layer({ queueName }),
    JobLibrary.layer(...jobNames.map(recordingJob)),
    ExecutorConfig.layerFromEnv()
  ).pipe(
    Layer.provideMerge(recorder),
    Layer.provide(SqlDatabase.layer(databaseUrl)),
    Layer.provide(AmqpConnection.layerConfig({
      url: Config.redacted("AMQP_URL"),
      connectionName: Config.succeed(`test worker ${process.pid}`)
    }))
  )
}))

Executor.run.pipe(Effect.provide(WorkerLive), NodeRuntime.runMain)
