/**
 * The executor end to end on PostgreSQL + RabbitMQ with real worker processes (`test/support/worker.ts`): every
 * program finishes, each step runs once and in order, and a SIGTERM shuts a worker down gracefully.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"
import { ProgramExecutor } from "@program-executor/core"
import { SqlDatabase, SqlProgramRepository } from "@program-executor/sql"
import amqp from "amqplib"
import { Effect, Layer, ManagedRuntime } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import pg from "pg"
import { serviceUrl } from "../packages/core/test/utils/services.js"
import { createExecutionsTable } from "./support/executions.js"

const root = fileURLToPath(new URL("..", import.meta.url))
const jobs = ["step_a", "step_b", "step_c"]

interface Worker {
  readonly child: ChildProcess
  readonly output: Array<string>
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>
}

const startWorker = (env: Record<string, string>): Worker => {
  const child = spawn(process.execPath, ["--import", "tsx", "test/support/worker.ts"], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"]
  })
  const output: Array<string> = []
  child.stdout!.on("data", (chunk) => output.push(String(chunk)))
  child.stderr!.on("data", (chunk) => output.push(String(chunk)))
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal, at: Date.now() }))
  )
  return { child, output, exited }
}

/** Polls until `check` holds, failing after `within` ms with `describe()`'s text. */
const eventually = async (what: string, check: () => Promise<boolean>, within = 60_000, describe = () => "") => {
  const deadline = Date.now() + within
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}\n${describe()}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

interface Execution {
  run_id: string
  step: number
  pid: number
  started_at: Date
  finished_at: Date | null
}

/** A table, a queue and an executions table of its own, a client to create programs, workers to run them. */
const makeWorld = async (databaseUrl: string, amqpUrl: string) => {
  const name = `e2e_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`
  const executionsTable = `${name}_exec`
  const db = new pg.Pool({ connectionString: databaseUrl, max: 2 })
  await createExecutionsTable(db, executionsTable)
  const client = ManagedRuntime.make(
    ProgramExecutor.layer.pipe(
      Layer.provideMerge(Layer.mergeAll(
        SqlProgramRepository.layer({ tableName: name }),
        AmqpProgramQueue.layer({ queueName: name })
      )),
      Layer.provide(SqlDatabase.layer(databaseUrl)),
      Layer.provide(AmqpConnection.layer({ url: amqpUrl, connectionName: `e2e client ${name}` }))
    )
  )
  const workers: Array<Worker> = []
  const world = {
    name,
    db,
    workers,
    start: (env: Record<string, string> = {}) => {
      const worker = startWorker({
        DATABASE_URL: databaseUrl,
        AMQP_URL: amqpUrl,
        PE_TABLE: name,
        PE_QUEUE: name,
        PE_EXECUTIONS_TABLE: executionsTable,
        PE_CONCURRENCY: "4",
        PE_SHUTDOWN_GRACE: "5 seconds",
        PE_JOB_DURATION: "20 millis",
        PE_SWEEP_INTERVAL: "2 seconds",
        PE_STALE_AFTER: "10 seconds",
        ...env
      })
      workers.push(worker)
      return worker
    },
    create: (count: number) =>
      client.runPromise(Effect.forEach(
        Array.from({ length: count }),
        () => ProgramExecutor.createProgram({ jobs }),
        { concurrency: 8 }
      )),
    /** Waits until `count` consumers are on the queue: every worker is up and consuming. */
    consumers: async (count: number) => {
      const connection = await amqp.connect(amqpUrl)
      connection.on("error", () => {})
      try {
        await eventually(`${count} consumer(s) on the queue`, async () => {
          const channel = await connection.createChannel()
          // Until a worker declared the queue, checkQueue fails and the broker closes the channel.
          channel.on("error", () => {})
          try {
            return (await channel.checkQueue(name)).consumerCount === count
          } catch {
            return false
          } finally {
            await channel.close().catch(() => {})
          }
        }, 60_000, () => world.logs())
      } finally {
        await connection.close()
      }
    },
    inProgress: async () =>
      Number((await db.query(`SELECT count(*) AS n FROM ${name} WHERE finished_at IS NULL AND errored_at IS NULL`)).rows[0].n),
    executions: async () =>
      (await db.query<Execution>(`SELECT run_id, step, pid, started_at, finished_at FROM ${executionsTable} ORDER BY id`)).rows,
    logs: () => workers.map((worker, index) => `--- worker ${index}\n${worker.output.join("").slice(-4000)}`).join("\n"),
    dispose: async () => {
      for (const worker of workers) if (worker.child.exitCode === null) worker.child.kill("SIGKILL")
      await client.dispose()
      await db.query(`DROP TABLE IF EXISTS ${executionsTable}`)
      await db.query(`DROP TABLE IF EXISTS ${name}`)
      await db.end()
      const connection = await amqp.connect(amqpUrl)
      const channel = await connection.createChannel()
      await channel.deleteQueue(name)
      await connection.close()
    }
  }
  return world
}

/** Every program finished; every step ran exactly once and after the previous one had finished. */
const expectEachStepOnceInOrder = (executions: ReadonlyArray<Execution>, runIds: ReadonlyArray<string>) => {
  for (const runId of runIds) {
    const own = executions.filter((execution) => execution.run_id === runId)
    expect(own.map((execution) => execution.step), `steps run for ${runId}`).toEqual([0, 1, 2])
    for (const execution of own) expect(execution.finished_at).not.toBeNull()
    for (let step = 1; step < own.length; step++) {
      expect(own[step]!.started_at.getTime()).toBeGreaterThanOrEqual(own[step - 1]!.finished_at!.getTime())
    }
  }
}

const databaseUrl = serviceUrl("DATABASE_URL")
const amqpUrl = serviceUrl("AMQP_URL")
const describeWithServices = databaseUrl !== undefined && amqpUrl !== undefined ? describe : describe.skip

describeWithServices("workers on PostgreSQL + RabbitMQ", () => {
  let world: Awaited<ReturnType<typeof makeWorld>> | undefined
  afterEach(async () => {
    await world?.dispose()
    world = undefined
  })

  for (const count of [1, 3]) {
    it(`${count} worker process(es) run every program, each step once, in order`, async () => {
      world = await makeWorld(databaseUrl!, amqpUrl!)
      const current = world
      for (let index = 0; index < count; index++) current.start()
      await current.consumers(count)
      const runIds = await current.create(count * 10)
      await eventually("every program finished", async () => (await current.inProgress()) === 0, 90_000, current.logs)
      const executions = await current.executions()
      expectEachStepOnceInOrder(executions, runIds)
      if (count > 1) {
        // Competing consumers: the work was spread, not done by one process.
        expect(new Set(executions.map((execution) => execution.pid)).size).toBeGreaterThan(1)
      }
      for (const worker of current.workers) worker.child.kill("SIGTERM")
      for (const worker of current.workers) expect((await worker.exited).code, current.logs()).toBe(0)
    }, 150_000)
  }

  it("SIGTERM: consumer cancelled first, running jobs finish within the grace, the rest go to other workers, exit 0", async () => {
    world = await makeWorld(databaseUrl!, amqpUrl!)
    const current = world
    const graceMillis = 8_000
    const env = { PE_CONCURRENCY: "3", PE_JOB_DURATION: "2500 millis", PE_SHUTDOWN_GRACE: `${graceMillis} millis` }
    const target = current.start(env)
    current.start(env)
    current.start(env)
    await current.consumers(3)
    const runIds = await current.create(12)
    const running = async () =>
      (await current.executions()).filter((execution) => execution.pid === target.child.pid && execution.finished_at === null)
    await eventually("the target worker is running jobs", async () => (await running()).length > 0, 60_000, current.logs)

    const broker = await amqp.connect(amqpUrl!)
    broker.on("error", () => {})
    const consumers = async () => {
      const channel = await broker.createChannel()
      channel.on("error", () => {})
      try {
        return (await channel.checkQueue(current.name)).consumerCount
      } finally {
        await channel.close().catch(() => {})
      }
    }
    expect(await consumers()).toBe(3)
    const signalledAt = Date.now()
    target.child.kill("SIGTERM")
    // The consumer goes first, while the process is still finishing its jobs.
    await eventually("the target's consumer is cancelled", async () => (await consumers()) === 2, 5_000, current.logs)
    expect(target.child.exitCode, "still finishing its jobs when its consumer was cancelled").toBeNull()
    const exit = await target.exited
    await broker.close()
    expect(exit.code, current.logs()).toBe(0)
    expect(exit.at - signalledAt).toBeLessThan(graceMillis)

    await eventually("every program finished", async () => (await current.inProgress()) === 0, 90_000, current.logs)
    const executions = await current.executions()
    expectEachStepOnceInOrder(executions, runIds)
    const byTarget = executions.filter((execution) => execution.pid === target.child.pid)
    for (const execution of byTarget) {
      // Its running jobs finished; it started none after the signal (a second for one already taken).
      expect(execution.finished_at).not.toBeNull()
      expect(execution.started_at.getTime()).toBeLessThan(signalledAt + 1_000)
    }
    expect(executions.some((execution) => execution.pid !== target.child.pid && execution.started_at.getTime() > signalledAt))
      .toBe(true)
    for (const worker of current.workers.slice(1)) worker.child.kill("SIGTERM")
    for (const worker of current.workers.slice(1)) expect((await worker.exited).code, current.logs()).toBe(0)
  }, 150_000)
})
