/**
 * `pnpm bench`: throughput and latency of program-executor beside the raw limits of the same machine, measured in
 * the same run. See BENCHMARKS.md for the method. Flags (or environment):
 *
 *   --quick                 short run: 200 programs, 1 repeat, short limit loops, 30 lone programs
 *   --programs N            programs per throughput run (BENCH_PROGRAMS, default 500)
 *   --jobs N                no-op jobs per program (BENCH_JOBS, default 5)
 *   --concurrency N         executor concurrency per process (BENCH_CONCURRENCY, default 16)
 *   --workers N             processes of the multi-process mode (BENCH_WORKERS, default 4)
 *   --create-chunk N        programs per createPrograms call of a throughput run (BENCH_CREATE_CHUNK, default 25; 1 =
 *                           createProgram one at a time, as before 2026-12-02: the creator, one process among the
 *                           workers on 2 cores, then bounded the 4-process runs)
 *   --create-concurrency N  concurrent creation calls (BENCH_CREATE_CONCURRENCY, default 4)
 *   --warmup N              programs run through the workers before each measured throughput run, untimed
 *                           (BENCH_WARMUP, default 500; 200 with --quick)
 *   --min-seconds N         a measured throughput run lasts at least about this long: its program count is raised
 *                           from the warm-up's rate (BENCH_MIN_SECONDS, default 3; 1 with --quick)
 *   --no-off-rows           skip the continuation-off runs (maxConsecutiveSteps = 1) beside each throughput mode
 *   --lone N                programs of the isolated-latency mode (BENCH_LONE, default 200)
 *   --growth a,b            finished rows already in the table for the growth mode (BENCH_GROWTH, default 1000,100000)
 *   --repeat N              runs of each throughput and growth measurement; the median is reported (BENCH_REPEAT, 3)
 *   --modes list            throughput modes: embedded,pg-sql,pg-amqp,pg-amqp-multi (BENCH_MODES, default all)
 *   --pg-connections N      connections of the raw UPDATE loop (BENCH_PG_CONNECTIONS, default 16)
 *   --only parts            comma list of limits,throughput,creation,lone,growth (BENCH_ONLY, default all)
 *   --batch N               programs per createPrograms call in the creation part (BENCH_BATCH, default 1000)
 *   --replot                redraw the .svg of an existing --out result and exit
 *   --out FILE              JSON result (default bench/results/latest.json; a .md table and .svg plot beside it)
 *
 * BENCH_CPU_PROF=DIR writes a V8 CPU profile of every bench process into DIR (open it in Chrome DevTools).
 *
 * DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test) and AMQP_URL (default amqp://guest:guest@127.0.0.1:5672).
 */
import amqp from "amqplib"
import { type ChildProcess, fork } from "node:child_process"
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { cpus, loadavg, tmpdir } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import pg from "pg"
import { amqpRelay, pgUpdateLoop, pgUpdateLoopProcesses, type Rate, sqliteUpdateLoop } from "./limits.js"

const here = dirname(fileURLToPath(import.meta.url))

// ---------------------------------------------------------------------------------------------------------------------
// Options

const argv = process.argv.slice(2)
const flag = (name: string) => argv.includes(`--${name}`)
const option = (name: string, envName: string): string | undefined => {
  const index = argv.indexOf(`--${name}`)
  if (index >= 0 && argv[index + 1] !== undefined) return argv[index + 1]
  const inline = argv.find((arg) => arg.startsWith(`--${name}=`))
  if (inline !== undefined) return inline.slice(name.length + 3)
  return process.env[envName]
}
const quick = flag("quick") || process.env.BENCH_QUICK === "1"
const int = (name: string, envName: string, normal: number, short: number) => {
  const raw = option(name, envName)
  const value = raw === undefined ? (quick ? short : normal) : Number(raw)
  if (!Number.isInteger(value) || value < 0) throw new Error(`--${name} must be a non-negative integer`)
  return value
}

const options = {
  quick,
  programs: int("programs", "BENCH_PROGRAMS", 500, 200),
  jobs: int("jobs", "BENCH_JOBS", 5, 5),
  concurrency: int("concurrency", "BENCH_CONCURRENCY", 16, 16),
  workers: int("workers", "BENCH_WORKERS", 4, 4),
  createConcurrency: int("create-concurrency", "BENCH_CREATE_CONCURRENCY", 4, 4),
  createChunk: Math.max(1, int("create-chunk", "BENCH_CREATE_CHUNK", 25, 25)),
  warmup: int("warmup", "BENCH_WARMUP", 500, 200),
  minSeconds: int("min-seconds", "BENCH_MIN_SECONDS", 3, 1),
  offRows: !flag("no-off-rows") && process.env.BENCH_OFF_ROWS !== "0",
  lone: int("lone", "BENCH_LONE", 200, 30),
  repeat: int("repeat", "BENCH_REPEAT", 3, 1),
  pgConnections: int("pg-connections", "BENCH_PG_CONNECTIONS", 16, 16),
  batch: int("batch", "BENCH_BATCH", 1000, 1000),
  limitMillis: int("limit-millis", "BENCH_LIMIT_MILLIS", 3000, 1500),
  growth: (option("growth", "BENCH_GROWTH") ?? "1000,100000").split(",").map(Number),
  modes: new Set((option("modes", "BENCH_MODES") ?? "embedded,pg-sql,pg-amqp,pg-amqp-multi").split(",")),
  only: new Set((option("only", "BENCH_ONLY") ?? "limits,throughput,creation,lone,growth").split(",")),
  out: resolve(option("out", "BENCH_OUT") ?? join(here, "results", "latest.json")),
  databaseUrl: process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test",
  amqpUrl: process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672"
}

const stamp = `${Date.now().toString(36)}${process.pid.toString(36)}`
const scratch = mkdtempSync(join(tmpdir(), "pe-bench-"))
let serial = 0
const uniqueName = (prefix: string) => `${prefix}_${stamp}_${serial++}`

const log = (message: string) => process.stderr.write(`[bench] ${message}\n`)

// ---------------------------------------------------------------------------------------------------------------------
// Statistics

const quantile = (values: ReadonlyArray<number>, q: number) => {
  if (values.length === 0) return NaN
  const sorted = [...values].sort((a, b) => a - b)
  const position = (sorted.length - 1) * q
  const low = Math.floor(position)
  const high = Math.ceil(position)
  return sorted[low]! + (sorted[high]! - sorted[low]!) * (position - low)
}
const median = (values: ReadonlyArray<number>) => quantile(values, 0.5)

// ---------------------------------------------------------------------------------------------------------------------
// Child processes

interface Child {
  readonly process: ChildProcess
  /** The next message of this type (messages that arrived earlier are kept). */
  readonly next: <A = any>(type: string, timeoutMillis?: number) => Promise<A>
  readonly send: (message: unknown) => void
  /** Asks it to stop; resolves with its peak RSS in bytes and the CPU it used since it was ready. */
  readonly stop: () => Promise<{ readonly rssBytes: number; readonly cpuMillis: number }>
}

/** Every child still running, killed if the bench itself is interrupted. */
const live = new Set<ChildProcess>()
process.on("exit", () => {
  for (const child of live) child.kill("SIGKILL")
})
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    for (const child of live) child.kill("SIGKILL")
    rmSync(scratch, { recursive: true, force: true })
    process.exit(130)
  })
}

const spawnChild = (env: Record<string, string>): Child => {
  const child = fork(join(here, "worker.ts"), [], {
    execArgv: [
      "--import",
      "tsx",
      // BENCH_CPU_PROF=DIR: a V8 CPU profile of every bench process, written to DIR when it exits.
      ...(process.env.BENCH_CPU_PROF ? ["--cpu-prof", `--cpu-prof-dir=${resolve(process.env.BENCH_CPU_PROF)}`] : [])
    ],
    env: { ...process.env, ...env },
    stdio: ["ignore", "inherit", "inherit", "ipc"]
  })
  live.add(child)
  const inbox: Array<{ t: string }> = []
  const waiters: Array<{ type: string; resolve: (message: any) => void }> = []
  let exited: string | undefined
  const failWaiters = () => {
    for (const waiter of waiters.splice(0)) waiter.resolve(Promise.reject(new Error(`bench child ${exited}`)))
  }
  child.on("message", (message: { t: string }) => {
    const index = waiters.findIndex((waiter) => waiter.type === message.t)
    if (index >= 0) waiters.splice(index, 1)[0]!.resolve(message)
    else inbox.push(message)
  })
  child.on("exit", (code, signal) => {
    live.delete(child)
    exited = `exited (${signal ?? code})`
    failWaiters()
  })
  const next = <A>(type: string, timeoutMillis = 600_000) =>
    new Promise<A>((resolve, reject) => {
      const index = inbox.findIndex((message) => message.t === type)
      if (index >= 0) return resolve(inbox.splice(index, 1)[0] as A)
      if (exited !== undefined) return reject(new Error(`bench child ${exited} before sending ${type}`))
      const timer = setTimeout(() => reject(new Error(`bench child sent no ${type} within ${timeoutMillis} ms`)), timeoutMillis)
      waiters.push({
        type,
        resolve: (message) => {
          clearTimeout(timer)
          Promise.resolve(message).then(resolve, reject)
        }
      })
    })
  return {
    process: child,
    next,
    send: (message) => child.send(message as any),
    stop: async () => {
      const stats = next<{ maxRssKb: number; cpuMillis: number }>("stats", 30_000)
      child.send({ t: "stop" })
      const { cpuMillis, maxRssKb } = await stats
      await new Promise((resolve) => child.exitCode !== null ? resolve(undefined) : child.once("exit", resolve))
      return { rssBytes: maxRssKb * 1024, cpuMillis }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Reading the programs table

type Backend = "embedded" | "pg-sql" | "pg-amqp"

interface Timing {
  readonly createdAt: number
  readonly finishedAt: number | null
  readonly errored: boolean
}

interface TableReader {
  readonly unfinished: () => Promise<number>
  readonly timings: (afterId: number) => Promise<Array<Timing>>
  readonly maxId: () => Promise<number>
  readonly close: () => Promise<void>
}

const pgReader = (client: pg.Client, table: string): TableReader => ({
  unfinished: async () =>
    Number(
      (await client.query(`SELECT count(*) AS n FROM ${table} WHERE finished_at IS NULL AND errored_at IS NULL`)).rows[0]
        .n
    ),
  maxId: async () => Number((await client.query(`SELECT coalesce(max(id), 0) AS n FROM ${table}`)).rows[0].n),
  timings: async (afterId) =>
    (await client.query(
      `SELECT extract(epoch FROM created_at) * 1000 AS c, extract(epoch FROM finished_at) * 1000 AS f,
              errored_at IS NOT NULL AS e FROM ${table} WHERE id > $1`,
      [afterId]
    )).rows.map((row) => ({
      createdAt: Number(row.c),
      finishedAt: row.f === null ? null : Number(row.f),
      errored: row.e
    })),
  close: async () => {
    await client.query(`DROP TABLE IF EXISTS ${table}`)
  }
})

interface SqliteReadonly {
  prepare(source: string): { get(...params: Array<unknown>): any; all(...params: Array<unknown>): Array<any> }
  close(): void
}

const sqliteTime = (value: string | null) => value === null ? null : Date.parse(`${value.replace(" ", "T")}Z`)

const sqliteReader = (filename: string, table: string): TableReader => {
  const Database = createRequire(import.meta.url)("better-sqlite3") as new(
    filename: string,
    options: { readonly: boolean }
  ) => SqliteReadonly
  let db: SqliteReadonly | undefined
  // The file exists once the worker has migrated it.
  const open = () => (db ??= new Database(filename, { readonly: true }))
  return {
    unfinished: async () =>
      open().prepare(`SELECT count(*) AS n FROM ${table} WHERE finished_at IS NULL AND errored_at IS NULL`).get().n,
    maxId: async () => open().prepare(`SELECT coalesce(max(id), 0) AS n FROM ${table}`).get().n,
    timings: async (afterId) =>
      open().prepare(`SELECT created_at AS c, finished_at AS f, errored_at AS e FROM ${table} WHERE id > ?`).all(
        afterId
      ).map((row) => ({ createdAt: sqliteTime(row.c)!, finishedAt: sqliteTime(row.f), errored: row.e !== null })),
    close: async () => db?.close()
  }
}

/** Old program rows, finished, as a long-running deployment has them. */
const prefillFinished = async (client: pg.Client, table: string, rows: number, jobs: number) => {
  if (rows <= 0) return
  const names = JSON.stringify(Array.from({ length: jobs }, (_, i) => `noop_${i}`))
  await client.query(
    `INSERT INTO ${table} (run_id, program_data, jobs, job_data, step, finished_at, created_at, updated_at, next_run_at)
     SELECT gen_random_uuid()::text, '{}'::jsonb, $1::jsonb, '{}'::jsonb, $2, now(), now(), now(), now()
     FROM generate_series(1, $3)`,
    [names, jobs - 1, rows]
  )
  await client.query(`ANALYZE ${table}`)
}

// ---------------------------------------------------------------------------------------------------------------------
// Throughput mode

interface ThroughputResult {
  readonly backend: Backend
  readonly processes: number
  /** The continuation cap the workers ran with; undefined: the executor's default. */
  readonly maxConsecutiveSteps: number | undefined
  readonly concurrency: number
  readonly programs: number
  readonly steps: number
  readonly prefilled: number
  readonly errored: number
  readonly stepsPerSecond: number
  readonly programsPerSecond: number
  readonly latencyP50Millis: number
  readonly latencyP95Millis: number
  readonly creationPerSecond: number
  readonly workerRssPeakBytes: number
  /** CPU (user + system) of the worker processes per step: what a step costs in Node, whatever else the machine runs. */
  readonly workerCpuMillisPerStep: number
  readonly seconds: number
}

const throughputRun = async (
  backend: Backend,
  processes: number,
  prefill = 0,
  maxConsecutiveSteps?: number
): Promise<ThroughputResult> => {
  const table = uniqueName(`bench_${backend.replace("-", "_")}`)
  const queue = `bench.${table}`
  const sqliteFile = join(scratch, `${table}.db`)
  const base: Record<string, string> = {
    BENCH_BACKEND: backend,
    BENCH_TABLE: table,
    BENCH_QUEUE: queue,
    BENCH_SQLITE_FILE: sqliteFile,
    BENCH_CONCURRENCY: String(options.concurrency),
    BENCH_JOBS: String(options.jobs),
    DATABASE_URL: options.databaseUrl,
    AMQP_URL: options.amqpUrl,
    ...(maxConsecutiveSteps === undefined ? {} : { BENCH_MAX_CONSECUTIVE_STEPS: String(maxConsecutiveSteps) })
  }
  const pgClient = backend === "embedded" ? undefined : new pg.Client({ connectionString: options.databaseUrl })
  // A database restart under the bench fails this run (the query rejects); it must not crash the whole bench.
  pgClient?.on("error", (error) => log(`bench connection lost: ${error.message}`))
  await pgClient?.connect()
  const children: Array<Child> = []
  try {
    let creator: Child
    let workers: Array<Child>
    if (backend === "embedded") {
      creator = spawnChild({ ...base, BENCH_ROLE: "both" })
      children.push(creator)
      workers = [creator]
      await creator.next("ready")
    } else {
      // The creator migrates the table; old rows go in before any worker starts.
      creator = spawnChild({ ...base, BENCH_ROLE: "creator" })
      children.push(creator)
      await creator.next("ready")
      await prefillFinished(pgClient!, table, prefill, options.jobs)
      workers = Array.from({ length: processes }, () => spawnChild({ ...base, BENCH_ROLE: "worker" }))
      children.push(...workers)
      await Promise.all(workers.map((worker) => worker.next("ready")))
    }
    const reader = backend === "embedded" ? sqliteReader(sqliteFile, table) : pgReader(pgClient!, table)
    // A query on a connection the server dropped (a restart under the bench) may never settle: bound each poll.
    const poll = () =>
      Promise.race([
        reader.unfinished(),
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error("polling the table timed out")), 15_000))
      ])
    /** Creates `count` programs and waits until every program in the table is finished. */
    const runPrograms = async (count: number) => {
      const started = performance.now()
      creator.send({ t: "create", count, concurrency: options.createConcurrency, chunk: options.createChunk })
      await creator.next("created", 300_000)
      while ((await poll()) > 0) {
        if (performance.now() > started + 300_000) throw new Error(`${backend}: programs still unfinished after 5 minutes`)
        await new Promise((resolve) => setTimeout(resolve, 25))
      }
    }
    // A worker that has run for a while: its hot path compiled by V8, its pools and channels open. Without this the
    // first second of a short run, interpreted code, weighs on every figure. The warm-up's programs are not measured
    // and the workers count CPU from the mark on.
    let programs = options.programs
    if (options.warmup > 0) {
      // Each process warms up on as many programs as a lone one would: split over 4 processes, 500 programs left each
      // one less compiled than the single process it was compared with.
      const warmup = options.warmup * processes
      const warmupStarted = performance.now()
      await runPrograms(warmup)
      // A run must last long enough to measure (BENCHMARKS.md): sized from the warm-up's rate. A warm worker runs
      // about twice as fast as the warm-up did (cold code, pools opening), so twice that rate is planned for.
      const warmupStepsPerSecond = (warmup * options.jobs) / ((performance.now() - warmupStarted) / 1000)
      programs = Math.max(programs, Math.ceil((options.minSeconds * 2 * warmupStepsPerSecond) / options.jobs))
      for (const worker of workers) worker.send({ t: "mark" })
      await Promise.all(workers.map((worker) => worker.next("marked")))
    }
    const before = await reader.maxId()
    await runPrograms(programs)
    const timings = await reader.timings(before)
    const stats = await Promise.all(workers.map((worker) => worker.stop()))
    if (creator !== workers[0]) await creator.stop()
    children.length = 0
    await reader.close()
    const finished = timings.filter((timing) => timing.finishedAt !== null)
    const firstCreated = Math.min(...timings.map((timing) => timing.createdAt))
    const lastCreated = Math.max(...timings.map((timing) => timing.createdAt))
    const lastFinished = Math.max(...finished.map((timing) => timing.finishedAt!))
    const seconds = (lastFinished - firstCreated) / 1000
    const latencies = finished.map((timing) => timing.finishedAt! - timing.createdAt)
    return {
      backend,
      processes,
      maxConsecutiveSteps,
      concurrency: options.concurrency,
      programs: timings.length,
      steps: finished.length * options.jobs,
      prefilled: prefill,
      errored: timings.filter((timing) => timing.errored).length,
      stepsPerSecond: (finished.length * options.jobs) / seconds,
      programsPerSecond: finished.length / seconds,
      latencyP50Millis: quantile(latencies, 0.5),
      latencyP95Millis: quantile(latencies, 0.95),
      creationPerSecond: timings.length / Math.max(0.001, (lastCreated - firstCreated) / 1000),
      workerRssPeakBytes: Math.max(...stats.map((s) => s.rssBytes)),
      workerCpuMillisPerStep: stats.reduce((sum, s) => sum + s.cpuMillis, 0) / (finished.length * options.jobs),
      seconds
    }
  } finally {
    for (const child of children) child.process.kill("SIGKILL")
    if (pgClient !== undefined) {
      await pgClient.query(`DROP TABLE IF EXISTS ${table}`).catch(() => {})
      await pgClient.end().catch(() => {})
    }
    if (backend === "pg-amqp") await deleteQueue(queue)
    rmSync(sqliteFile, { force: true })
    rmSync(`${sqliteFile}-wal`, { force: true })
    rmSync(`${sqliteFile}-shm`, { force: true })
  }
}

const deleteQueue = async (queue: string) => {
  try {
    const connection = await amqp.connect(options.amqpUrl)
    const channel = await connection.createChannel()
    await channel.deleteQueue(queue)
    await connection.close()
  } catch (error) {
    log(`could not delete queue ${queue}: ${String(error)}`)
  }
}

/** The run whose steps/s is the median of `repeat` runs. */
const medianRun = async (backend: Backend, processes: number, prefill = 0, maxConsecutiveSteps?: number) => {
  const runs: Array<ThroughputResult> = []
  for (let i = 0; i < Math.max(1, options.repeat); i++) {
    const result = await throughputRun(backend, processes, prefill, maxConsecutiveSteps).catch((error) => {
      log(`${backend} ×${processes} run failed: ${error instanceof Error ? error.message : String(error)}`)
      return undefined
    })
    if (result === undefined) continue
    log(
      `${backend} ×${processes}${prefill > 0 ? ` (+${prefill} rows)` : ""}${
        maxConsecutiveSteps === undefined ? "" : ` (max ${maxConsecutiveSteps} consecutive)`
      }: ${Math.round(result.stepsPerSecond)} steps/s in ${result.seconds.toFixed(1)} s, p50 ${
        result.latencyP50Millis.toFixed(0)
      } ms, worker CPU ${result.workerCpuMillisPerStep.toFixed(3)} ms/step${result.errored > 0 ? `, ${result.errored} errored` : ""}`
    )
    runs.push(result)
  }
  if (runs.length === 0) return undefined
  const sorted = [...runs].sort((a, b) => a.stepsPerSecond - b.stepsPerSecond)
  return { ...sorted[Math.floor((sorted.length - 1) / 2)]!, runs: runs.map((run) => Math.round(run.stepsPerSecond)) }
}

/** Drops what a one-process run made: its table (PostgreSQL), its queue (RabbitMQ) or its SQLite file. */
const dropScratch = async (backend: Backend, table: string, queue: string, sqliteFile: string) => {
  if (backend !== "embedded") {
    const client = new pg.Client({ connectionString: options.databaseUrl })
    await client.connect()
    await client.query(`DROP TABLE IF EXISTS ${table}`)
    await client.end()
  }
  if (backend === "pg-amqp") await deleteQueue(queue)
  for (const suffix of ["", "-wal", "-shm"]) rmSync(`${sqliteFile}${suffix}`, { force: true })
}

// ---------------------------------------------------------------------------------------------------------------------
// Batch creation: `createPrograms` alone, no worker running

interface CreationResult {
  readonly backend: Backend
  readonly batch: number
  readonly programs: number
  readonly seconds: number
  readonly programsPerSecond: number
}

const creationRun = async (backend: Backend): Promise<CreationResult> => {
  const table = uniqueName(`bench_create_${backend.replace("-", "_")}`)
  const queue = `bench.${table}`
  const sqliteFile = join(scratch, `${table}.db`)
  const child = spawnChild({
    BENCH_BACKEND: backend,
    BENCH_ROLE: "creator",
    BENCH_TABLE: table,
    BENCH_QUEUE: queue,
    BENCH_SQLITE_FILE: sqliteFile,
    BENCH_JOBS: String(options.jobs),
    DATABASE_URL: options.databaseUrl,
    AMQP_URL: options.amqpUrl
  })
  try {
    await child.next("ready")
    // A short untimed round first, as the throughput modes warm up.
    child.send({ t: "createBatches", seconds: 0.5, chunk: options.batch })
    await child.next("createdBatches")
    child.send({ t: "createBatches", seconds: options.minSeconds, chunk: options.batch })
    const { count, millis } = await child.next<{ count: number; millis: number }>("createdBatches")
    return {
      backend,
      batch: options.batch,
      programs: count,
      seconds: millis / 1000,
      programsPerSecond: count / (millis / 1000)
    }
  } finally {
    child.process.kill("SIGKILL")
    await dropScratch(backend, table, queue, sqliteFile)
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Isolated latency: one program at a time

interface LoneResult {
  readonly backend: Backend
  readonly programs: number
  readonly stepP50Millis: number
  readonly stepP95Millis: number
  readonly firstStepP50Millis: number
  readonly programP50Millis: number
  readonly programP95Millis: number
}

const loneRun = async (backend: Backend): Promise<LoneResult> => {
  const table = uniqueName(`bench_lone_${backend.replace("-", "_")}`)
  const queue = `bench.${table}`
  const sqliteFile = join(scratch, `${table}.db`)
  const warmup = Math.min(10, Math.floor(options.lone / 5))
  const child = spawnChild({
    BENCH_BACKEND: backend,
    BENCH_TABLE: table,
    BENCH_QUEUE: queue,
    BENCH_SQLITE_FILE: sqliteFile,
    BENCH_CONCURRENCY: String(options.concurrency),
    BENCH_JOBS: String(options.jobs),
    BENCH_LONE: String(options.lone + warmup),
    DATABASE_URL: options.databaseUrl,
    AMQP_URL: options.amqpUrl
  })
  try {
    const { programs } = await child.next<{ programs: Array<{ starts: Array<number>; totalMillis: number }> }>("lone")
    await child.next("stats")
    const measured = programs.slice(warmup)
    const steps = measured.flatMap((program) => program.starts.slice(1).map((t, i) => t - program.starts[i]!))
    return {
      backend,
      programs: measured.length,
      stepP50Millis: quantile(steps, 0.5),
      stepP95Millis: quantile(steps, 0.95),
      firstStepP50Millis: median(measured.map((program) => program.starts[0]!)),
      programP50Millis: quantile(measured.map((program) => program.totalMillis), 0.5),
      programP95Millis: quantile(measured.map((program) => program.totalMillis), 0.95)
    }
  } finally {
    child.process.kill("SIGKILL")
    await dropScratch(backend, table, queue, sqliteFile)
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Limits

interface Limits {
  sqliteUpdate?: number
  pgUpdate: Record<number, number>
  pgUpdateNamed: Record<number, number>
  amqpRelay: Record<number, number>
  samples: Array<
    { readonly name: string; readonly concurrency: number; readonly perSecond: number; readonly cpuMicrosPerOp?: number }
  >
  /** The prepared UPDATE loop in 1 and in `workers` processes (`options.concurrency` loops each), by process count. */
  pgUpdateProcesses: Record<number, { readonly perSecond: number; readonly cpuMicrosPerOp: number }>
}

const measureLimits = async (limits: Limits, concurrencies: ReadonlyArray<number>) => {
  // A failed measurement (the database out of connections, say) is reported, not fatal: the modes still run.
  const record = async (
    name: string,
    concurrency: number,
    measure: () => (Rate & { readonly cpuMicrosPerOp?: number }) | Promise<Rate & { readonly cpuMicrosPerOp?: number }>
  ) => {
    try {
      const rate = await measure()
      limits.samples.push({
        name,
        concurrency,
        perSecond: rate.perSecond,
        ...(rate.cpuMicrosPerOp === undefined ? {} : { cpuMicrosPerOp: rate.cpuMicrosPerOp })
      })
      log(`limit ${name} @${concurrency}: ${Math.round(rate.perSecond)}/s`)
    } catch (error) {
      log(`limit ${name} @${concurrency} failed: ${error instanceof Error ? error.message : String(error)}`)
    }
  }
  await record("sqlite-update", 1, () => sqliteUpdateLoop(join(scratch, "raw.db"), { millis: options.limitMillis }))
  // The SQL modes run in one process: their UPDATE limit is needed at one concurrency only.
  const table = uniqueName("bench_raw_update")
  for (const named of [false, true]) {
    await record(named ? "pg-update-named" : "pg-update", options.concurrency, () =>
      pgUpdateLoop(options.databaseUrl, {
        concurrency: options.concurrency,
        millis: options.limitMillis,
        named,
        table,
        maxConnections: options.pgConnections
      }))
  }
  // The multi-process mode is compared with one process in the same run; so is the plain statement loop.
  if (options.modes.has("pg-amqp-multi") && options.workers > 1) {
    for (const processes of [1, options.workers]) {
      await record(`pg-update-processes-${processes}`, options.concurrency, () =>
        pgUpdateLoopProcesses(options.databaseUrl, {
          processes,
          concurrency: options.concurrency,
          millis: options.limitMillis,
          table: uniqueName("bench_raw_processes")
        }))
    }
  }
  for (const concurrency of concurrencies) {
    await record(
      "amqp-relay",
      concurrency,
      () => amqpRelay(options.amqpUrl, { concurrency, millis: options.limitMillis, queue: `bench.relay.${stamp}` })
    )
  }
}

/** The mean of the samples taken before and after the modes. */
const summarizeLimits = (limits: Limits) => {
  const mean = (name: string, concurrency: number) => {
    const values = limits.samples.filter((s) => s.name === name && s.concurrency === concurrency).map((s) => s.perSecond)
    return values.length === 0 ? NaN : values.reduce((a, b) => a + b, 0) / values.length
  }
  limits.sqliteUpdate = mean("sqlite-update", 1)
  for (const sample of limits.samples) {
    limits.pgUpdate[sample.concurrency] = mean("pg-update", sample.concurrency)
    limits.pgUpdateNamed[sample.concurrency] = mean("pg-update-named", sample.concurrency)
    limits.amqpRelay[sample.concurrency] = mean("amqp-relay", sample.concurrency)
  }
  for (const processes of [1, options.workers]) {
    const samples = limits.samples.filter((s) => s.name === `pg-update-processes-${processes}`)
    if (samples.length === 0) continue
    const average = (values: ReadonlyArray<number>) => values.reduce((a, b) => a + b, 0) / values.length
    limits.pgUpdateProcesses[processes] = {
      perSecond: average(samples.map((s) => s.perSecond)),
      cpuMicrosPerOp: average(samples.map((s) => s.cpuMicrosPerOp ?? NaN))
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Output

const fmt = (value: number, digits = 0) =>
  Number.isFinite(value) ? value.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }) : "–"
const mib = (bytes: number) => `${fmt(bytes / 1024 / 1024)} MiB`
const pct = (ratio: number) => Number.isFinite(ratio) ? `${Math.round(ratio * 100)}%` : "–"

const markdownTable = (header: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>) => {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)))
  const line = (cells: ReadonlyArray<string>) =>
    `| ${cells.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join(" | ")} |`
  return [
    line(header),
    `| ${widths.map((w, i) => (i === 0 ? "-".repeat(w) : `${"-".repeat(w - 1)}:`)).join(" | ")} |`,
    ...rows.map(line)
  ].join("\n")
}

const modeLabel = (backend: Backend, processes: number, maxConsecutiveSteps?: number) =>
  (backend === "embedded"
    ? "embedded (SQLite + SQL queue)"
    : backend === "pg-sql"
    ? `PostgreSQL, SQL queue, ${processes} proc`
    : `PostgreSQL + RabbitMQ, ${processes} proc`) + (maxConsecutiveSteps === 1 ? ", continuation off" : "")

/** Horizontal bars on a log scale (the limits and the modes differ by orders of magnitude on a busy machine). */
const svgPlot = (
  bars: ReadonlyArray<{ label: string; value: number; limit: number; limitLabel: string }>,
  caption: string
) => {
  const width = 780
  const rowHeight = 46
  const left = 230
  const right = 30
  const top = 40
  const height = top + bars.length * rowHeight + 50
  const max = Math.max(...bars.flatMap((bar) => [bar.value, Number.isFinite(bar.limit) ? bar.limit : 0]))
  const floor = 10
  const decades = Math.ceil(Math.log10(max)) - Math.log10(floor)
  const x = (value: number) => (Math.max(0, Math.log10(Math.max(value, floor)) - Math.log10(floor)) / decades) * (width - left - right)
  const escape = (text: string) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;")
  const grid = Array.from({ length: decades + 1 }, (_, i) => floor * 10 ** i).map((tick) =>
    `<line x1="${(left + x(tick)).toFixed(1)}" y1="${top - 4}" x2="${(left + x(tick)).toFixed(1)}" y2="${
      top + bars.length * rowHeight
    }" stroke="#ddd"/><text x="${(left + x(tick)).toFixed(1)}" y="${top + bars.length * rowHeight + 14}" font-size="10" text-anchor="middle" fill="#555">${
      fmt(tick)
    }</text>`
  )
  const rows = bars.map((bar, i) => {
    const y = top + i * rowHeight
    const limitBar = Number.isFinite(bar.limit)
      ? `<rect x="${left}" y="${y}" width="${x(bar.limit).toFixed(1)}" height="30" fill="#d6e4f0"/>` +
        `<text x="${(left + x(bar.limit) - 4).toFixed(1)}" y="${y + 11}" font-size="10" text-anchor="end" fill="#456">${
          escape(bar.limitLabel)
        } ${fmt(bar.limit)}</text>`
      : ""
    return `${limitBar}<rect x="${left}" y="${y + 14}" width="${x(bar.value).toFixed(1)}" height="14" fill="#2a6fb0"/>` +
      `<text x="${left - 8}" y="${y + 20}" font-size="12" text-anchor="end">${escape(bar.label)}</text>` +
      `<text x="${(left + x(bar.value) + 4).toFixed(1)}" y="${y + 26}" font-size="11" font-weight="bold">${
        fmt(bar.value)
      }${Number.isFinite(bar.limit) ? ` (${pct(bar.value / bar.limit)} of limit)` : ""}</text>`
  })
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="${left}" y="22" font-size="14" font-weight="bold">steps/s by mode (dark) and its raw limit, same run (light); log scale</text>
${grid.join("\n")}
${rows.join("\n")}
<text x="${left}" y="${height - 10}" font-size="10" fill="#555">${escape(caption)}</text>
</svg>
`
}

const plotFromResult = (result: {
  readonly startedAt: string
  readonly options: { readonly programs: number; readonly jobs: number; readonly concurrency: number }
  readonly machine: { readonly cores: number }
  readonly throughput: ReadonlyArray<
    ThroughputResult & { readonly limit: { readonly name: string; readonly value: number } }
  >
}) =>
  svgPlot(
    result.throughput.map((mode) => ({
      label: modeLabel(mode.backend, mode.processes, mode.maxConsecutiveSteps),
      value: mode.stepsPerSecond,
      limit: mode.limit.value ?? NaN,
      limitLabel: mode.limit.name
    })),
    `${result.startedAt}: ${result.options.programs} programs × ${result.options.jobs} no-op jobs, concurrency ${result.options.concurrency} per process, ${result.machine.cores} cores`
  )

// ---------------------------------------------------------------------------------------------------------------------

const main = async () => {
  if (flag("replot")) {
    // Redraws the plot of an existing result (--out FILE, default the latest).
    writeFileSync(options.out.replace(/\.json$/, ".svg"), plotFromResult(JSON.parse(readFileSync(options.out, "utf8"))))
    return
  }
  const started = new Date()
  log(
    `programs ${options.programs} × ${options.jobs} jobs, concurrency ${options.concurrency}, workers ${options.workers}, repeat ${options.repeat}${
      quick ? " (quick)" : ""
    }; load ${loadavg().map((l) => l.toFixed(1)).join(" ")}`
  )
  const limits: Limits = { pgUpdate: {}, pgUpdateNamed: {}, amqpRelay: {}, pgUpdateProcesses: {}, samples: [] }
  const concurrencies = [...new Set([options.concurrency, options.concurrency * options.workers])]
  const measureAllLimits = () => options.only.has("limits") ? measureLimits(limits, concurrencies) : Promise.resolve()

  await measureAllLimits()
  const throughput: Array<ThroughputResult & { runs: Array<number> }> = []
  const keep = (into: Array<ThroughputResult & { runs: Array<number> }>) =>
  (result: (ThroughputResult & { runs: Array<number> }) | undefined) => {
    if (result !== undefined) into.push(result)
  }
  if (options.only.has("throughput")) {
    // Each mode with continuation (the default) and, beside it, without (one step per message).
    const both = async (backend: Backend, processes: number) => {
      keep(throughput)(await medianRun(backend, processes))
      if (options.offRows) keep(throughput)(await medianRun(backend, processes, 0, 1))
    }
    if (options.modes.has("embedded")) await both("embedded", 1)
    if (options.modes.has("pg-sql")) await both("pg-sql", 1)
    if (options.modes.has("pg-amqp")) await both("pg-amqp", 1)
    if (options.modes.has("pg-amqp-multi") && options.workers > 1) await both("pg-amqp", options.workers)
  }
  const creation: Array<CreationResult> = []
  if (options.only.has("creation")) {
    for (const backend of ["embedded", "pg-sql", "pg-amqp"] as const) {
      const result = await creationRun(backend).catch((error) => {
        log(`creation ${backend} failed: ${error instanceof Error ? error.message : String(error)}`)
        return undefined
      })
      if (result === undefined) continue
      log(`createPrograms ${backend}: ${Math.round(result.programsPerSecond)} programs/s`)
      creation.push(result)
    }
  }
  const lone: Array<LoneResult> = []
  if (options.only.has("lone")) {
    for (const backend of ["embedded", "pg-sql", "pg-amqp"] as const) {
      const result = await loneRun(backend).catch((error) => {
        log(`lone ${backend} failed: ${error instanceof Error ? error.message : String(error)}`)
        return undefined
      })
      if (result === undefined) continue
      log(`lone ${backend}: step p50 ${result.stepP50Millis.toFixed(2)} ms, p95 ${result.stepP95Millis.toFixed(2)} ms`)
      lone.push(result)
    }
  }
  const growth: Array<ThroughputResult & { runs: Array<number> }> = []
  if (options.only.has("growth")) {
    for (const backend of ["pg-sql", "pg-amqp"] as const) {
      for (const rows of options.growth) keep(growth)(await medianRun(backend, 1, rows))
    }
  }
  await measureAllLimits()
  summarizeLimits(limits)

  // With continuation a step is one guarded UPDATE: every mode is compared with the database's own limit, the
  // prepared single-row UPDATE (SQLite's for the embedded mode). The relay stays in the limits table.
  const limitOf = (result: ThroughputResult) =>
    result.backend === "embedded"
      ? { name: "SQLite UPDATE/s", value: limits.sqliteUpdate ?? NaN }
      : { name: `PG prepared UPDATE/s @${options.concurrency}`, value: limits.pgUpdateNamed[options.concurrency] ?? NaN }

  const throughputTable = markdownTable(
    [
      "mode",
      "conc.",
      "programs",
      "run",
      "steps/s",
      "programs/s",
      "latency p50",
      "latency p95",
      "created/s",
      "worker RSS peak",
      "worker CPU/step",
      "limit",
      "limit/s",
      "ratio"
    ],
    throughput.map((result) => {
      const limit = limitOf(result)
      return [
        modeLabel(result.backend, result.processes, result.maxConsecutiveSteps),
        `${result.processes}×${result.concurrency}`,
        fmt(result.programs),
        `${fmt(result.seconds, 1)} s`,
        fmt(result.stepsPerSecond),
        fmt(result.programsPerSecond),
        `${fmt(result.latencyP50Millis)} ms`,
        `${fmt(result.latencyP95Millis)} ms`,
        fmt(result.creationPerSecond),
        mib(result.workerRssPeakBytes),
        `${fmt(result.workerCpuMillisPerStep, 3)} ms`,
        limit.name,
        fmt(limit.value),
        pct(result.stepsPerSecond / limit.value)
      ]
    })
  )
  const limitsTable = markdownTable(
    ["raw limit (same run)", "concurrency", "ops/s"],
    [
      ["SQLite single-row UPDATE (WAL, synchronous=NORMAL)", "1", fmt(limits.sqliteUpdate ?? NaN)],
      ...concurrencies.flatMap((c) => [
        ...(c === options.concurrency
          ? [
            [`PostgreSQL single-row UPDATE, unnamed statement (${Math.min(c, options.pgConnections)} conn.)`, String(c), fmt(limits.pgUpdate[c] ?? NaN)],
            [`PostgreSQL single-row UPDATE, named/prepared (${Math.min(c, options.pgConnections)} conn.)`, String(c), fmt(limits.pgUpdateNamed[c] ?? NaN)]
          ]
          : []),
        ["amqplib relay consume→publish(confirm)→ack", String(c), fmt(limits.amqpRelay[c] ?? NaN)]
      ]),
      ...Object.entries(limits.pgUpdateProcesses).map(([processes, rate]) => [
        `PostgreSQL prepared UPDATE loop in ${processes} process(es), ${options.concurrency} conn. each (client CPU ${
          fmt(rate.cpuMicrosPerOp, 1)
        } µs/op)`,
        `${processes}×${options.concurrency}`,
        fmt(rate.perSecond)
      ])
    ]
  )
  // More processes on one machine: the workers' scaling beside the plain statement loop's, measured in the same run.
  const scalingRows = [undefined, 1].flatMap((maxConsecutiveSteps) => {
    const one = throughput.find((r) => r.backend === "pg-amqp" && r.processes === 1 && r.maxConsecutiveSteps === maxConsecutiveSteps)
    const many = throughput.find((r) =>
      r.backend === "pg-amqp" && r.processes === options.workers && r.maxConsecutiveSteps === maxConsecutiveSteps
    )
    if (one === undefined || many === undefined) return []
    return [[
      modeLabel("pg-amqp", options.workers, maxConsecutiveSteps).replace("PostgreSQL + RabbitMQ, ", "program-executor, "),
      `${(many.stepsPerSecond / one.stepsPerSecond).toFixed(2)}×`,
      `${(many.workerCpuMillisPerStep / one.workerCpuMillisPerStep).toFixed(2)}×`
    ]]
  })
  const rawOne = limits.pgUpdateProcesses[1]
  const rawMany = limits.pgUpdateProcesses[options.workers]
  if (rawOne !== undefined && rawMany !== undefined && options.workers > 1) {
    scalingRows.push([
      `plain prepared UPDATE loop, ${options.workers} proc`,
      `${(rawMany.perSecond / rawOne.perSecond).toFixed(2)}×`,
      `${(rawMany.cpuMicrosPerOp / rawOne.cpuMicrosPerOp).toFixed(2)}×`
    ])
  }
  const scalingTable = markdownTable([`${options.workers} processes vs 1 (same run)`, "rate", "client CPU per op"], scalingRows)
  const creationTable = markdownTable(
    ["createPrograms (no worker running)", "per call", "programs", "run", "programs/s"],
    creation.map((result) => [
      modeLabel(result.backend, 1).replace(", 1 proc", ""),
      fmt(result.batch),
      fmt(result.programs),
      `${fmt(result.seconds, 1)} s`,
      fmt(result.programsPerSecond)
    ])
  )
  const loneTable = markdownTable(
    ["isolated (one program at a time)", "programs", "step p50", "step p95", "create→1st job p50", "program p50", "program p95"],
    lone.map((result) => [
      modeLabel(result.backend, 1),
      String(result.programs),
      `${fmt(result.stepP50Millis, 2)} ms`,
      `${fmt(result.stepP95Millis, 2)} ms`,
      `${fmt(result.firstStepP50Millis, 2)} ms`,
      `${fmt(result.programP50Millis, 1)} ms`,
      `${fmt(result.programP95Millis, 1)} ms`
    ])
  )
  const growthRows = growth.map((result) => {
    const baseline = growth.find((other) => other.backend === result.backend && other.prefilled === options.growth[0]) ??
      result
    return [
      modeLabel(result.backend, 1),
      fmt(result.prefilled),
      fmt(result.stepsPerSecond),
      `${fmt(1000 / result.stepsPerSecond, 3)} ms`,
      `${fmt(result.workerCpuMillisPerStep, 3)} ms`,
      `${fmt(result.latencyP50Millis)} ms`,
      result === baseline ? "–" : `${((baseline.stepsPerSecond / result.stepsPerSecond - 1) * 100).toFixed(1)}%`,
      result === baseline ? "–" : `${((result.workerCpuMillisPerStep / baseline.workerCpuMillisPerStep - 1) * 100).toFixed(1)}%`,
      result.runs.join(", ")
    ]
  })
  const growthTable = markdownTable(
    ["growth", "finished rows before", "steps/s", "wall/step", "worker CPU/step", "latency p50", "wall vs first", "CPU vs first", "runs (steps/s)"],
    growthRows
  )
  const text = [
    `program-executor bench, ${started.toISOString()}: ≥ ${options.programs} programs × ${options.jobs} no-op jobs per run (≥ ${options.minSeconds} s), ` +
    `concurrency ${options.concurrency}/process, median of ${options.repeat}, ${cpus().length} cores, load ${
      loadavg().map((l) => l.toFixed(1)).join(" ")
    }`,
    "",
    throughput.length > 0 ? throughputTable : "",
    "",
    limits.samples.length > 0 ? limitsTable : "",
    "",
    scalingRows.length > 0 ? scalingTable : "",
    "",
    creation.length > 0 ? creationTable : "",
    "",
    lone.length > 0 ? loneTable : "",
    "",
    growth.length > 0 ? growthTable : ""
  ].join("\n").replace(/\n{3,}/g, "\n\n")
  process.stdout.write(`${text}\n`)

  mkdirSync(dirname(options.out), { recursive: true })
  const result = {
    startedAt: started.toISOString(),
    finishedAt: new Date().toISOString(),
    machine: { cores: cpus().length, cpu: cpus()[0]?.model, node: process.version, loadavg: loadavg() },
    options: { ...options, only: [...options.only] },
    limits,
    throughput: throughput.map((result) => ({
      ...result,
      limit: limitOf(result),
      ratio: result.stepsPerSecond / limitOf(result).value
    })),
    creation,
    lone,
    growth
  }
  writeFileSync(options.out, `${JSON.stringify(result, null, 2)}\n`)
  writeFileSync(options.out.replace(/\.json$/, ".md"), `${text}\n`)
  if (throughput.length > 0) writeFileSync(options.out.replace(/\.json$/, ".svg"), plotFromResult(result))
  log(`wrote ${options.out} (and .md, .svg)`)
}

main().then(
  () => {
    rmSync(scratch, { recursive: true, force: true })
    process.exit(0)
  },
  (error) => {
    console.error(error)
    rmSync(scratch, { recursive: true, force: true })
    process.exit(1)
  }
)
