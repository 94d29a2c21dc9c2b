/**
 * RabbitMQ stops (`rabbitmqctl stop_app`) and starts again while worker processes run many programs on PostgreSQL +
 * RabbitMQ: every program finishes and no step runs twice. Messages the broker held survive (durable queue,
 * persistent messages); wake-ups published during the outage are retried after the reconnect, and whatever was lost
 * is re-published by the sweeper. It stops the shared broker, so it runs only in the sequential faults run
 * (`PE_FAULTS=1`), never beside the normal suite. The broker is always started again.
 *
 *   PE_FAULTS=1 DATABASE_URL=postgres://postgres@127.0.0.1:5432/test AMQP_URL=amqp://guest:guest@127.0.0.1:5672 \
 *     npx vitest run test/faults
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"
import { ProgramExecutor } from "@program-executor/core"
import { SqlDatabase, SqlProgramRepository } from "@program-executor/sql"
import amqp from "amqplib"
import { Effect, Layer, ManagedRuntime } from "effect"
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import pg from "pg"
import { serviceUrl } from "../../packages/core/test/utils/services.js"
import { createExecutionsTable } from "../support/executions.js"

const enabled = process.env.PE_FAULTS === "1"
const root = fileURLToPath(new URL("../..", import.meta.url))
const jobs = ["step_a", "step_b", "step_c"]

const rabbitmqctl = (...args: Array<string>) => execFileSync("rabbitmqctl", ["-q", ...args], { stdio: "ignore" })
const startBroker = () => {
  rabbitmqctl("start_app")
  rabbitmqctl("await_startup")
}

const sleep = (millis: number) => new Promise((resolve) => setTimeout(resolve, millis))

const eventually = async (what: string, check: () => Promise<boolean>, within: number, explain = () => "") => {
  const deadline = Date.now() + within
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}\n${explain()}`)
    await sleep(100)
  }
}

interface Worker {
  readonly child: ChildProcess
  readonly output: Array<string>
  readonly exited: Promise<number | null>
}

const databaseUrl = enabled ? serviceUrl("DATABASE_URL") : undefined
const amqpUrl = enabled ? serviceUrl("AMQP_URL") : undefined
const describeFault = enabled && databaseUrl !== undefined && amqpUrl !== undefined ? describe : describe.skip
if (!enabled) console.warn("\n!!! test/faults skipped: set PE_FAULTS=1 (it stops RabbitMQ) to run them\n")

describeFault("RabbitMQ restart under running workers", () => {
  afterAll(() => {
    // Whatever happened, leave the shared broker running.
    startBroker()
  })

  it("every program finishes and no step runs twice across stop_app / start_app", async () => {
    const name = `fault_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`
    const executionsTable = `${name}_exec`
    const db = new pg.Pool({ connectionString: databaseUrl!, max: 2 })
    await createExecutionsTable(db, executionsTable)
    const client = ManagedRuntime.make(
      ProgramExecutor.layer.pipe(
        Layer.provideMerge(Layer.mergeAll(
          SqlProgramRepository.layer({ tableName: name }),
          AmqpProgramQueue.layer({ queueName: name })
        )),
        Layer.provide(SqlDatabase.layer(databaseUrl!)),
        Layer.provide(AmqpConnection.layer({ url: amqpUrl!, connectionName: `fault client ${name}` }))
      )
    )
    const workers: Array<Worker> = []
    const logs = () => workers.map((worker, index) => `--- worker ${index}\n${worker.output.join("").slice(-6000)}`).join("\n")
    try {
      const runIds = await client.runPromise(Effect.forEach(
        Array.from({ length: 60 }),
        () => ProgramExecutor.createProgram({ jobs }),
        { concurrency: 8 }
      ))
      for (let index = 0; index < 2; index++) {
        const child = spawn(process.execPath, ["--import", "tsx", "test/support/worker.ts"], {
          cwd: root,
          env: {
            ...process.env,
            DATABASE_URL: databaseUrl!,
            AMQP_URL: amqpUrl!,
            PE_TABLE: name,
            PE_QUEUE: name,
            PE_EXECUTIONS_TABLE: executionsTable,
            PE_CONCURRENCY: "4",
            PE_JOB_DURATION: "400 millis",
            PE_SHUTDOWN_GRACE: "5 seconds",
            PE_SWEEP_INTERVAL: "1 second",
            PE_STALE_AFTER: "3 seconds"
          },
          stdio: ["ignore", "pipe", "pipe"]
        })
        const output: Array<string> = []
        child.stdout!.on("data", (chunk) => output.push(String(chunk)))
        child.stderr!.on("data", (chunk) => output.push(String(chunk)))
        workers.push({ child, output, exited: new Promise((resolve) => child.once("exit", resolve)) })
      }
      const finishedSteps = async () =>
        Number((await db.query(`SELECT count(*) AS n FROM ${executionsTable} WHERE finished_at IS NOT NULL`)).rows[0].n)
      await eventually("some steps ran", async () => (await finishedSteps()) >= 16, 90_000, logs)

      let finishedWhenStopped = 0
      try {
        rabbitmqctl("stop_app")
        finishedWhenStopped = await finishedSteps()
        // The outage itself: jobs finish, advance in PostgreSQL, and cannot publish or ack meanwhile.
        await sleep(4_000)
      } finally {
        startBroker()
      }
      expect(finishedWhenStopped, "the broker stopped mid-run").toBeLessThan(runIds.length * jobs.length)

      await eventually(
        "every program finished",
        async () =>
          Number((await db.query(`SELECT count(*) AS n FROM ${name} WHERE finished_at IS NULL`)).rows[0].n) === 0,
        120_000,
        logs
      )
      const errored = await db.query(`SELECT run_id, error_message FROM ${name} WHERE errored_at IS NOT NULL`)
      expect(errored.rows).toEqual([])
      const executions = (await db.query<{ run_id: string; step: number; finished_at: Date | null }>(
        `SELECT run_id, step, finished_at FROM ${executionsTable} ORDER BY id`
      )).rows
      for (const runId of runIds) {
        const own = executions.filter((execution) => execution.run_id === runId)
        expect(own.map((execution) => execution.step), `steps run for ${runId}`).toEqual([0, 1, 2])
        for (const execution of own) expect(execution.finished_at).not.toBeNull()
      }
      for (const worker of workers) worker.child.kill("SIGTERM")
      for (const worker of workers) expect(await worker.exited, logs()).toBe(0)
    } finally {
      for (const worker of workers) if (worker.child.exitCode === null) worker.child.kill("SIGKILL")
      await client.dispose()
      await db.query(`DROP TABLE IF EXISTS ${executionsTable}`)
      await db.query(`DROP TABLE IF EXISTS ${name}`)
      await db.end()
      const connection = await amqp.connect(amqpUrl!)
      const channel = await connection.createChannel()
      await channel.deleteQueue(name)
      await connection.close()
    }
  }, 300_000)
})
