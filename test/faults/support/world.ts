/**
 * The world of a scenario with worker processes on PostgreSQL + RabbitMQ (the fault suite, the end-to-end workers
 * test, the soak): a programs table, a queue and an executions table of its own, a client that creates programs, and
 * worker processes (`test/support/worker.ts`) to start, kill and signal.
 */
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"
import { ProgramExecutor } from "@program-executor/core"
import { SqlDatabase, SqlProgramRepository } from "@program-executor/sql"
import amqp from "amqplib"
import { Effect, Layer, ManagedRuntime } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import pg from "pg"
import { duplicatingQueue } from "../../support/duplicatingQueue.js"
import { check, type CheckOptions } from "./check.js"
import { jobNames } from "./hooks.js"
import { createExecutionsTable } from "../../support/executions.js"

const root = fileURLToPath(new URL("../../..", import.meta.url))

export const sleep = (millis: number) => new Promise<void>((resolve) => setTimeout(resolve, millis))

/** Polls until `check` holds, failing after `within` ms with `explain()`'s text. */
export const eventually = async (
  what: string,
  check: () => Promise<boolean>,
  within: number,
  explain: () => string = () => ""
) => {
  const deadline = Date.now() + within
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${within} ms waiting until ${what}\n${explain()}`)
    await sleep(100)
  }
}

export interface Exit {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly at: number
}

export interface Worker {
  readonly child: ChildProcess
  readonly pid: number
  readonly output: Array<string>
  readonly exited: Promise<Exit>
  readonly alive: () => boolean
  /** It logged "worker started": its signal handlers are installed and it consumes. */
  readonly ready: () => boolean
}

/** Resident set size of a live process in MiB (Linux), undefined once it is gone. */
export const rssMiB = (pid: number): number | undefined => {
  try {
    const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))
    return match === null ? undefined : Number(match[1]) / 1024
  } catch {
    return undefined
  }
}

/** Worker settings shared by the scenarios: short leases and sweeps, so recovery is measured in seconds. */
export const defaultWorkerEnv: Record<string, string> = {
  PE_CONCURRENCY: "8",
  PE_JOB_DURATION: "20 millis",
  PE_JOBS: jobNames.join(","),
  PE_LEASE_DURATION: "5 seconds",
  PE_HEARTBEAT_INTERVAL: "500 millis",
  PE_SWEEP_INTERVAL: "2 seconds",
  // A step waiting longer than this is re-published (once per period): kept above the time a backlog waits here.
  PE_STALE_AFTER: "10 seconds",
  PE_SHUTDOWN_GRACE: "5 seconds",
  PE_MAX_ATTEMPTS: "unlimited"
}

/** A row of the executions table: one run of one job, by the worker process `pid`. */
export interface Execution {
  readonly run_id: string
  readonly step: number
  readonly pid: number
  readonly started_at: Date
  readonly finished_at: Date | null
}

export interface WorldOptions {
  readonly databaseUrl: string
  readonly amqpUrl: string
  /** Prefix of the table and queue names. */
  readonly prefix: string
  /** The client publishes every first wake-up twice. */
  readonly duplicatePublish?: boolean
}

export type World = Awaited<ReturnType<typeof makeWorld>>

export const makeWorld = async (options: WorldOptions) => {
  const name = `${options.prefix}_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 6)}`
  const executionsTable = `${name}_exec`
  const db = new pg.Pool({ connectionString: options.databaseUrl, max: 3 })
  await createExecutionsTable(db, executionsTable)
  const queue = AmqpProgramQueue.layer({ queueName: name })
  const client = ManagedRuntime.make(
    ProgramExecutor.layer.pipe(
      Layer.provideMerge(Layer.mergeAll(
        SqlProgramRepository.layer({ tableName: name }),
        options.duplicatePublish === true ? duplicatingQueue.pipe(Layer.provide(queue)) : queue
      )),
      Layer.provide(SqlDatabase.layer(options.databaseUrl)),
      Layer.provide(AmqpConnection.layer({ url: options.amqpUrl, connectionName: `fault client ${name}` }))
    )
  )
  // The table exists once the client's layer is built.
  await client.runPromise(Effect.void)
  const workers: Array<Worker> = []

  const start = (env: Record<string, string> = {}): Worker => {
    const child = spawn(process.execPath, ["--import", "tsx", "test/support/worker.ts"], {
      cwd: root,
      env: {
        ...process.env,
        DATABASE_URL: options.databaseUrl,
        AMQP_URL: options.amqpUrl,
        PE_TABLE: name,
        PE_QUEUE: name,
        PE_EXECUTIONS_TABLE: executionsTable,
        ...defaultWorkerEnv,
        ...env
      },
      stdio: ["ignore", "pipe", "pipe"]
    })
    const output: Array<string> = []
    let size = 0
    let ready = false
    const keep = (chunk: unknown) => {
      if (!ready && String(chunk).includes("worker started")) ready = true
      // Keep the tail only: a long soak must not hold every log line in memory.
      output.push(String(chunk))
      size += String(chunk).length
      while (size > 64_000 && output.length > 1) size -= output.shift()!.length
    }
    child.stdout!.on("data", keep)
    child.stderr!.on("data", keep)
    const exited = new Promise<Exit>((resolve) =>
      child.once("exit", (code, signal) => resolve({ code, signal, at: Date.now() }))
    )
    const worker: Worker = {
      child,
      pid: child.pid!,
      output,
      exited,
      alive: () => child.exitCode === null && child.signalCode === null,
      ready: () => ready
    }
    workers.push(worker)
    return worker
  }

  const count = async (where: string) =>
    Number((await db.query(`SELECT count(*)::int AS n FROM ${name} WHERE ${where}`)).rows[0].n)

  return {
    name,
    executionsTable,
    db,
    workers,
    start,
    /** Creates `count` programs (five jobs each unless `jobs` is given), eight at a time; returns their run ids. */
    create: (count: number, jobs: ReadonlyArray<string> = jobNames) =>
      client.runPromise(Effect.forEach(
        Array.from({ length: count }),
        () => ProgramExecutor.createProgram({ jobs: [...jobs] }),
        { concurrency: 8 }
      )),
    /**
     * Like `create`, but a failed creation does not fail the batch: the run ids created, and the errors of the rest
     * (a long run shares the database with others and may meet "too many clients" or a restart).
     */
    createSettled: (count: number, jobs: ReadonlyArray<string> = jobNames) =>
      client.runPromise(Effect.forEach(
        Array.from({ length: count }),
        () => Effect.either(ProgramExecutor.createProgram({ jobs: [...jobs] })),
        { concurrency: 8 }
      )).then((results) => ({
        runIds: results.flatMap((result) => result._tag === "Right" ? [result.right] : []),
        errors: results.flatMap((result) => result._tag === "Left" ? [result.left.message] : [])
      })),
    /** Cancels a program the way an application does (`ProgramExecutor.cancel`); the row as the cancel left it. */
    cancel: (runId: string, reason?: string) => client.runPromise(ProgramExecutor.cancel(runId, reason)),
    /** Steps completed so far, over all programs (a finished program counts all its jobs). */
    stepsDone: async () =>
      Number(
        (await db.query(
          `SELECT coalesce(sum(CASE WHEN finished_at IS NOT NULL THEN jsonb_array_length(jobs) ELSE step END), 0)::int AS n
           FROM ${name} WHERE jsonb_typeof(jobs) = 'array'`
        )).rows[0].n
      ),
    inProgress: () => count("finished_at IS NULL AND errored_at IS NULL"),
    /** Programs whose lease is still held. */
    leased: () => count("locked_by IS NOT NULL"),
    /** The suite's invariants (`check`) over `runIds` of this world's tables. */
    check: (runIds: ReadonlyArray<string>, more: Pick<CheckOptions, "expectErrors" | "deaths"> = {}) =>
      check({ db, table: name, executionsTable, runIds, ...more }),
    /** Unfinished, or still holding a lease: nothing may be left like this at the end of a scenario. */
    unsettled: () => count("(finished_at IS NULL AND errored_at IS NULL) OR locked_by IS NOT NULL OR locked_until IS NOT NULL"),
    logs: (tail = 3000) =>
      workers.map((worker) => `--- worker ${worker.pid}\n${worker.output.join("").slice(-tail)}`).join("\n"),
    /**
     * SIGTERM to each worker once it has started (a process still loading has no handler yet: the signal would kill
     * it), and their exits.
     */
    stop: async (stopping: ReadonlyArray<Worker>) => {
      await eventually("the workers started", async () => stopping.every((worker) => worker.ready() || !worker.alive()), 120_000)
      for (const worker of stopping) worker.child.kill("SIGTERM")
      return Promise.all(stopping.map((worker) => worker.exited))
    },
    /** Sends raw bytes to the queue, as a foreign publisher would. */
    publishRaw: async (bodies: ReadonlyArray<Buffer>) => {
      const connection = await amqp.connect(options.amqpUrl)
      try {
        const channel = await connection.createConfirmChannel()
        await channel.assertQueue(name, { durable: true })
        for (const body of bodies) channel.sendToQueue(name, body, { persistent: true })
        await channel.waitForConfirms()
        await channel.close()
      } finally {
        await connection.close()
      }
    },
    /** What the jobs recorded, in the order they started. */
    executions: async () =>
      (await db.query<Execution>(
        `SELECT run_id, step, pid, started_at, finished_at FROM ${executionsTable} ORDER BY id`
      )).rows,
    /** Consumers on the main queue now; 0 until a worker declared it. */
    consumerCount: async () => {
      const connection = await amqp.connect(options.amqpUrl)
      connection.on("error", () => {})
      try {
        const channel = await connection.createChannel()
        // Until a worker declared the queue, checkQueue fails and the broker closes the channel.
        channel.on("error", () => {})
        return await channel.checkQueue(name).then((queue) => queue.consumerCount, () => 0)
      } finally {
        await connection.close().catch(() => {})
      }
    },
    /** Messages ready in the main queue (not counting those delivered and not yet acknowledged). */
    queueDepth: async () => {
      const connection = await amqp.connect(options.amqpUrl)
      try {
        const channel = await connection.createChannel()
        return (await channel.checkQueue(name)).messageCount
      } finally {
        await connection.close()
      }
    },
    dispose: async () => {
      for (const worker of workers) if (worker.alive()) worker.child.kill("SIGKILL")
      await Promise.all(workers.map((worker) => worker.exited))
      await client.dispose()
      await db.query(`DROP TABLE IF EXISTS ${executionsTable}`)
      await db.query(`DROP TABLE IF EXISTS ${name}`)
      await db.end()
      const connection = await amqp.connect(options.amqpUrl)
      const channel = await connection.createChannel()
      await channel.deleteQueue(name)
      await connection.close()
    }
  }
}
