/**
 * The raw limits a mode is compared with, measured on the same services in the same run, without the framework:
 * - PostgreSQL: `concurrency` connections, each looping a single-row `UPDATE … WHERE id = $1` on its own rows
 *   (unnamed statements, as `@effect/sql-pg` sends them; and named, i.e. prepared, for the headroom).
 * - SQLite: one connection looping the same UPDATE on a WAL file with synchronous=NORMAL (one transaction each).
 * - The same PostgreSQL loop in 1 and in N processes at once, `concurrency` loops each: what this machine itself loses
 *   when one client's work is spread over processes, the reference for the multi-process mode (`pgUpdateLoopProcesses`).
 * - RabbitMQ: an amqplib relay: consume (prefetch = concurrency) → publish the next message on a confirm channel →
 *   ack after the confirm; durable queue, persistent messages, TCP_NODELAY. `concurrency` messages circulate.
 */
import amqp from "amqplib"
import { fork } from "node:child_process"
import { createRequire } from "node:module"
import { fileURLToPath } from "node:url"
import pg from "pg"

export interface Rate {
  readonly ops: number
  readonly seconds: number
  readonly perSecond: number
}

const rate = (ops: number, millis: number): Rate => ({ ops, seconds: millis / 1000, perSecond: ops / (millis / 1000) })

export const pgUpdateLoop = async (
  url: string,
  options: {
    readonly concurrency: number
    readonly millis: number
    readonly named: boolean
    readonly table: string
    /** Connections opened; `concurrency` loops share them (a worker's pool is smaller than its concurrency too). */
    readonly maxConnections: number
  }
): Promise<Rate> => {
  const { concurrency, millis, named, table } = options
  const setup = new pg.Client({ connectionString: url })
  await setup.connect()
  const rowsPerClient = 8
  await setup.query(`DROP TABLE IF EXISTS ${table}`)
  await setup.query(
    `CREATE TABLE ${table} (id integer PRIMARY KEY, n integer NOT NULL DEFAULT 0, updated_at timestamptz NOT NULL DEFAULT now())`
  )
  await setup.query(`INSERT INTO ${table} (id) SELECT generate_series(1, ${concurrency * rowsPerClient})`)
  const pool = new pg.Pool({ connectionString: url, max: Math.min(concurrency, options.maxConnections) })
  // Open the connections before the clock starts.
  await Promise.all(Array.from({ length: Math.min(concurrency, options.maxConnections) }, () =>
    pool.query("SELECT 1")))
  const text = `UPDATE ${table} SET n = n + 1, updated_at = now() WHERE id = $1`
  let ops = 0
  let running = true
  const started = performance.now()
  const loops = Array.from({ length: concurrency }, async (_, c) => {
    let i = 0
    while (running) {
      const id = c * rowsPerClient + (i++ % rowsPerClient) + 1
      await (named ? pool.query({ name: "bench_update", text, values: [id] }) : pool.query(text, [id]))
      ops++
    }
  })
  await new Promise((resolve) => setTimeout(resolve, millis))
  running = false
  await Promise.all(loops)
  const elapsed = performance.now() - started
  await pool.end()
  await setup.query(`DROP TABLE IF EXISTS ${table}`)
  await setup.end()
  return rate(ops, elapsed)
}

interface SqliteDatabase {
  pragma(source: string): unknown
  exec(source: string): unknown
  prepare(source: string): { run(...params: Array<unknown>): unknown }
  close(): void
}

export const sqliteUpdateLoop = (filename: string, options: { readonly millis: number }): Rate => {
  // better-sqlite3 has no types installed here; the four calls used are typed above.
  const Database = createRequire(import.meta.url)("better-sqlite3") as new(filename: string) => SqliteDatabase
  const db = new Database(filename)
  db.pragma("journal_mode = WAL")
  db.pragma("synchronous = NORMAL")
  db.exec("DROP TABLE IF EXISTS raw_update")
  db.exec("CREATE TABLE raw_update (id INTEGER PRIMARY KEY, n INTEGER NOT NULL DEFAULT 0, updated_at TEXT)")
  const rows = 128
  db.prepare(
    `WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ${rows}) INSERT INTO raw_update (id) SELECT i FROM s`
  ).run()
  const update = db.prepare(
    "UPDATE raw_update SET n = n + 1, updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') WHERE id = ?"
  )
  let ops = 0
  const started = performance.now()
  // Check the clock every 256 updates: the loop is synchronous, as the embedded hot path's statements are.
  while (performance.now() - started < options.millis) {
    for (let i = 0; i < 256; i++) update.run((ops++ % rows) + 1)
  }
  const elapsed = performance.now() - started
  db.close()
  return rate(ops, elapsed)
}

export const amqpRelay = async (
  url: string,
  options: { readonly concurrency: number; readonly millis: number; readonly queue: string }
): Promise<Rate> => {
  const { concurrency, millis, queue } = options
  const connection = await amqp.connect(url, { noDelay: true })
  const consumer = await connection.createChannel()
  const publisher = await connection.createConfirmChannel()
  await publisher.assertQueue(queue, { durable: true })
  await publisher.purgeQueue(queue)
  await consumer.prefetch(concurrency)
  const body = (n: number) => Buffer.from(JSON.stringify({ runId: "00000000-0000-4000-8000-000000000000", step: n }))
  const publish = (n: number) =>
    new Promise<void>((resolve, reject) => {
      publisher.publish("", queue, body(n), { persistent: true, contentType: "application/json" }, (error) =>
        error ? reject(error) : resolve())
    })
  let ops = 0
  let running = true
  let started = 0
  const done = new Promise<void>((resolve) => {
    let inFlight = concurrency
    void consumer.consume(queue, (message) => {
      if (message === null) return
      if (!running) {
        consumer.ack(message)
        if (--inFlight === 0) resolve()
        return
      }
      publish(ops).then(() => {
        ops++
        consumer.ack(message)
      }, () => consumer.nack(message))
    }, { noAck: false })
  })
  started = performance.now()
  await Promise.all(Array.from({ length: concurrency }, (_, n) => publish(n)))
  await new Promise((resolve) => setTimeout(resolve, millis))
  running = false
  const elapsed = performance.now() - started
  const counted = ops
  // Let the circulating messages drain (each is acked without a new publish).
  await Promise.race([done, new Promise((resolve) => setTimeout(resolve, 2000))])
  await publisher.deleteQueue(queue)
  await connection.close()
  return rate(counted, elapsed)
}

export interface ProcessesRate extends Rate {
  /** The client processes' CPU (user + system) per operation, in microseconds. */
  readonly cpuMicrosPerOp: number
}

/**
 * `pgUpdateLoop` (named statement) in `processes` child processes at once, each on its own table with `concurrency`
 * loops and as many connections: the sum of their rates and their CPU per operation.
 */
export const pgUpdateLoopProcesses = async (
  url: string,
  options: { readonly processes: number; readonly concurrency: number; readonly millis: number; readonly table: string }
): Promise<ProcessesRate> => {
  const results = await Promise.all(Array.from({ length: options.processes }, (_, index) =>
    new Promise<{ readonly ops: number; readonly seconds: number; readonly cpuMillis: number }>((resolve, reject) => {
      const child = fork(fileURLToPath(import.meta.url), [], {
        execArgv: ["--import", "tsx"],
        env: {
          ...process.env,
          BENCH_LIMIT_CHILD: JSON.stringify({ url, ...options, table: `${options.table}_${index}` })
        }
      })
      child.once("message", resolve)
      child.once("error", reject)
      child.once("exit", (code) => reject(new Error(`a raw UPDATE loop process exited with ${code}`)))
    })))
  const ops = results.reduce((sum, result) => sum + result.ops, 0)
  const seconds = Math.max(...results.map((result) => result.seconds))
  const cpuMillis = results.reduce((sum, result) => sum + result.cpuMillis, 0)
  return { ops, seconds, perSecond: ops / seconds, cpuMicrosPerOp: (cpuMillis * 1000) / Math.max(1, ops) }
}

// A child of `pgUpdateLoopProcesses`: runs its loop, reports, exits.
if (process.env.BENCH_LIMIT_CHILD !== undefined) {
  const { url, concurrency, millis, table } = JSON.parse(process.env.BENCH_LIMIT_CHILD)
  const before = process.cpuUsage()
  const result = await pgUpdateLoop(url, { concurrency, millis, named: true, table, maxConnections: concurrency })
  const cpu = process.cpuUsage(before)
  process.send!({ ops: result.ops, seconds: result.seconds, cpuMillis: (cpu.user + cpu.system) / 1000 }, () =>
    process.exit(0))
}
