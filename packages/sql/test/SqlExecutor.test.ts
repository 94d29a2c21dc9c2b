/**
 * What only the SQL backends can show: URLs and table names, concurrent migrations, several workers on one table,
 * rows broken by hand, and the embedded mode resuming after a restart.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import {
  Executor,
  ProgramQueue,
  ExecutorConfig,
  Job,
  JobContext,
  JobLibrary,
  ProgramExecutor,
  ProgramRepository
} from "@program-executor/core"
import { Context, Deferred, Duration, Effect, Exit, Fiber, Layer, Logger, LogLevel, Option, Redacted, Schedule } from "effect"
import { rmSync } from "node:fs"
import { describeWithService } from "../../core/test/utils/services.js"
import { SqlDatabase, SqlProgramExecutor, SqlProgramQueue, SqlProgramRepository } from "../src/index.js"
import { PreparedStatements } from "../src/internal/preparedStatements.js"
import { type Backend, database, sqliteFile, storage } from "./utils.js"

let counter = 0
const uniqueTable = (prefix: string) =>
  `${prefix}_${Date.now().toString(36)}_${(counter++).toString(36)}_${Math.random().toString(36).slice(2, 6)}`

const workerConfig = (workerId: string): ExecutorConfig.ExecutorOptions => ({
  ...ExecutorConfig.defaults(),
  workerId,
  concurrency: 8,
  leaseDuration: Duration.seconds(10),
  heartbeatInterval: Duration.seconds(1),
  retrySchedule: Schedule.spaced("10 millis"),
  sweepInterval: Duration.seconds(1),
  staleAfter: Duration.seconds(2),
  shutdownGrace: Duration.seconds(2),
  storageRetry: Schedule.spaced("50 millis").pipe(Schedule.upTo("20 seconds"))
})

/** Polls `list` until no program is in progress, at most `within`. */
const awaitIdle = (within: Duration.DurationInput = "60 seconds") =>
  Effect.flatMap(ProgramRepository, (repository) => {
    const loop: Effect.Effect<void, unknown> = Effect.flatMap(
      repository.list({ inProgressOnly: true, limit: 1 }),
      (left) => left.length === 0 ? Effect.void : Effect.zipRight(Effect.sleep("50 millis"), loop)
    )
    return loop.pipe(Effect.timeoutFail({ duration: within, onTimeout: () => new Error("programs still in progress") }))
  })

const quiet = Logger.minimumLogLevel(LogLevel.None)

const dropTable = (backend: Backend, tableName: string, url?: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql`DROP TABLE IF EXISTS ${sql(tableName)}`).pipe(
    Effect.provide(database(backend, tableName, url)),
    Effect.ignore
  )

describe("SqlDatabase", () => {
  it.effect("rejects an unknown scheme without showing the password", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(SqlDatabase.parseUrl("redis://admin:s3cret@localhost:6379/0"))
      expect(error._tag).toBe("InvalidDatabaseUrlError")
      expect(error.message).toContain("redis://admin:***@localhost:6379/0")
      expect(error.message).not.toContain("s3cret")
      const built = yield* Effect.exit(
        Layer.build(SqlDatabase.layer(Redacted.make("oracle://u:hunter2@db/x"))).pipe(Effect.scoped)
      )
      expect(Exit.isFailure(built)).toBe(true)
      expect(JSON.stringify(built)).not.toContain("hunter2")
    }))

  it.effect("never shows a password: in the URL, after an @ in it, or as ?password=, in errors or retry logs", () =>
    Effect.gen(function*() {
      const forms = [
        ["postgres://u:p@ssw0rd@127.0.0.1:1/db", "ssw0rd"],
        ["postgres://u@127.0.0.1:1/db?password=hunter2", "hunter2"],
        ["mysql://root:p@ssw0rd@127.0.0.1:1/test", "ssw0rd"],
        ["mysql://root@127.0.0.1:1/test?password=hunter2", "hunter2"]
      ] as const
      for (const [url, secret] of forms) {
        expect(SqlDatabase.redactUrl(url)).not.toContain(secret)
        const lines: Array<string> = []
        const logger = Logger.replace(Logger.defaultLogger, Logger.make(({ message }) => lines.push(String(message))))
        const built = yield* Effect.exit(
          Layer.build(SqlDatabase.layer(url, { connectRetry: Schedule.recurs(1) })).pipe(
            Effect.scoped,
            Effect.provide(logger)
          )
        )
        expect(Exit.isFailure(built)).toBe(true)
        expect(lines.some((line) => line.includes("is not answering yet"))).toBe(true)
        expect(lines.join("\n")).not.toContain(secret)
      }
      // A raw / ? # in a password cuts the URL short: refused, without any piece of it.
      for (const url of ["postgres://u:12/secret@h/db", "mysql://root:12?secret@h/test"]) {
        const error = yield* Effect.flip(SqlDatabase.parseUrl(url))
        expect(error.message).toContain("percent-encoded")
        expect(error.message).not.toContain("secret")
      }
    }))

  it.effect("chooses the driver by scheme", () =>
    Effect.gen(function*() {
      expect((yield* SqlDatabase.parseUrl("postgresql://u:p@h:5433/db"))._tag).toBe("pg")
      const mysql = yield* SqlDatabase.parseUrl("mariadb://root:p%40ss@db.local/test")
      expect(mysql).toMatchObject({ _tag: "mysql", host: "db.local", port: 3306, database: "test", username: "root" })
      expect(mysql._tag === "mysql" && Redacted.value(mysql.password!)).toBe("p@ss")
      expect(yield* SqlDatabase.parseUrl("sqlite:./data/x.db")).toEqual({ _tag: "sqlite", filename: "./data/x.db" })
      expect(yield* SqlDatabase.parseUrl("file:/tmp/x.db")).toEqual({ _tag: "sqlite", filename: "/tmp/x.db" })
      expect(yield* SqlDatabase.parseUrl("sqlite::memory:")).toEqual({ _tag: "sqlite", filename: ":memory:" })
      expect((yield* Effect.flip(SqlDatabase.parseUrl("sqlite:")))._tag).toBe("InvalidDatabaseUrlError")
      expect((yield* Effect.flip(SqlDatabase.parseUrl("mysql://")))._tag).toBe("InvalidDatabaseUrlError")
    }))

  it.effect("an unsafe table name is a typed error, and no SQL is sent", () =>
    Effect.gen(function*() {
      for (const tableName of ["programs; DROP TABLE x", "1abc", "a-b", "", "x".repeat(64), "naïve"]) {
        const error = yield* Effect.flip(
          SqlProgramRepository.make({ tableName }).pipe(Effect.provide(SqlDatabase.layerSqlite(":memory:")))
        )
        expect(error._tag).toBe("InvalidTableNameError")
        const queueError = yield* Effect.flip(
          SqlProgramQueue.make({ tableName }).pipe(Effect.scoped, Effect.provide(SqlDatabase.layerSqlite(":memory:")))
        )
        expect(queueError._tag).toBe("InvalidTableNameError")
      }
      // A 63-character name is fine, indexes included.
      yield* SqlProgramRepository.make({ tableName: "t".repeat(63) }).pipe(
        Effect.provide(SqlDatabase.layerSqlite(":memory:"))
      )
    }))
})

const backendSuite = (backend: Backend, url?: string) => {
  it.live("several workers starting at once create the table once", () =>
    Effect.gen(function*() {
      const tableName = uniqueTable("mig")
      const start = (insert: boolean) =>
        Effect.gen(function*() {
          const repository = yield* SqlProgramRepository.make({ tableName })
          if (insert) yield* repository.insert({ runId: crypto.randomUUID(), jobs: ["a"], programData: {}, jobData: {} })
          return yield* repository.list({})
        }).pipe(Effect.provide(database(backend, tableName, url)))
      yield* Effect.all(Array.from({ length: 6 }, () => start(false)), { concurrency: "unbounded" })
      expect(yield* start(true)).toHaveLength(1)
      yield* dropTable(backend, tableName, url)
    }), { timeout: 60_000 })

  it.live("several workers on one table: every program finishes, no step runs twice or on two workers at once", () =>
    Effect.gen(function*() {
      const tableName = uniqueTable("conc")
      const programs = backend === "sqlite" ? 300 : 200
      const jobNames = ["a", "b", "c", "d"]
      const runs = new Map<string, number>()
      const active = new Set<string>()
      const overlaps: Array<string> = []
      const jobs = jobNames.map((name) =>
        Job.make(
          name,
          Effect.gen(function*() {
            const ctx = yield* JobContext
            const key = `${ctx.runId}/${ctx.step}`
            if (active.has(key)) overlaps.push(key)
            active.add(key)
            runs.set(key, (runs.get(key) ?? 0) + 1)
            yield* ctx.jobData.merge({ ran: true })
            yield* Effect.yieldNow()
            active.delete(key)
          })
        )
      )
      const services = Layer.mergeAll(
        ProgramExecutor.layer.pipe(Layer.provideMerge(storage(backend, url)(tableName))),
        JobLibrary.layer(...jobs)
      )
      yield* Effect.gen(function*() {
        for (const index of [0, 1, 2, 3]) {
          yield* Effect.forkScoped(
            Effect.provideService(Executor.run, ExecutorConfig.ExecutorConfig, workerConfig(`worker-${index}`))
          )
        }
        const runIds = yield* Effect.forEach(
          Array.from({ length: programs }),
          () => ProgramExecutor.createProgram({ jobs: jobNames }),
          { concurrency: 8 }
        )
        yield* awaitIdle()
        const repository = yield* ProgramRepository
        const rows = yield* repository.list({ limit: programs + 1, order: "asc" })
        expect(rows).toHaveLength(programs)
        for (const row of rows) {
          expect(row.finishedAt, `${row.runId}: ${row.errorMessage}`).not.toBeNull()
          expect(row.erroredAt).toBeNull()
          expect(row.step).toBe(jobNames.length - 1)
          expect(row.jobData).toEqual(Object.fromEntries(jobNames.map((name) => [name, { ran: true }])))
        }
        expect(overlaps).toEqual([])
        for (const runId of runIds) {
          for (const step of [0, 1, 2, 3]) expect(runs.get(`${runId}/${step}`), `${runId}/${step}`).toBe(1)
        }
      }).pipe(Effect.scoped, Effect.provide(services))
    }).pipe(Effect.provide(quiet)), { timeout: 120_000 })

  it.live("a row broken by hand fails that program with a clear message; the worker runs the others", () =>
    Effect.gen(function*() {
      const tableName = uniqueTable("bad")
      const ran: Array<string> = []
      const job = Job.make("a", Effect.flatMap(JobContext, (ctx) => Effect.sync(() => ran.push(ctx.runId))))
      const services = Layer.mergeAll(
        ProgramExecutor.layer.pipe(Layer.provideMerge(storage(backend, url)(tableName))),
        JobLibrary.layer(job)
      )
      yield* Effect.gen(function*() {
        const executor = yield* ProgramExecutor
        const repository = yield* ProgramRepository
        const sql = yield* SqlClient.SqlClient
        const good = yield* Effect.forEach([1, 2, 3], () => executor.createProgram({ jobs: ["a"] }))
        const wrongShape = yield* executor.createProgram({ jobs: ["a"] })
        const badData = yield* executor.createProgram({ jobs: ["a"] })
        yield* sql.unsafe(`UPDATE ${tableName} SET jobs = '{"a": 1}' WHERE run_id = '${wrongShape}'`).raw
        yield* sql.unsafe(`UPDATE ${tableName} SET program_data = '"text"' WHERE run_id = '${badData}'`).raw
        // Malformed text only where the column accepts it (SQLite); jsonb and MariaDB's JSON check refuse it.
        const malformed = backend === "sqlite" ? Option.some(yield* executor.createProgram({ jobs: ["a"] })) : Option.none()
        if (Option.isSome(malformed)) {
          yield* sql.unsafe(`UPDATE ${tableName} SET jobs = '["a", oops' WHERE run_id = '${malformed.value}'`).raw
        }
        yield* Effect.forkScoped(Effect.provideService(Executor.run, ExecutorConfig.ExecutorConfig, workerConfig("w")))
        yield* awaitIdle()
        for (const runId of good) expect((yield* repository.get(runId)).pipe(Option.getOrThrow).finishedAt).not.toBeNull()
        const shape = Option.getOrThrow(yield* repository.get(wrongShape))
        expect(shape.erroredAt).not.toBeNull()
        expect(shape.errorMessage).toMatch(/cannot be read: jobs is not a JSON array/)
        const data = Option.getOrThrow(yield* repository.get(badData))
        expect(data.errorMessage).toMatch(/program_data is not a JSON object/)
        if (Option.isSome(malformed)) {
          const row = Option.getOrThrow(yield* repository.get(malformed.value))
          expect(row.errorMessage).toMatch(/jobs is not valid JSON/)
        }
        expect(ran.sort()).toEqual([...good].sort())
      }).pipe(Effect.scoped, Effect.provide(Layer.merge(services, database(backend, tableName, url))))
    }).pipe(Effect.provide(quiet)), { timeout: 60_000 })
}

describe("SQLite", () => {
  backendSuite("sqlite")

  it.live("layerEmbedded: programs created before a restart finish after it", () =>
    Effect.gen(function*() {
      const filename = sqliteFile(uniqueTable("embedded"))
      const job = Job.make("a", Effect.void)
      const embedded = SqlProgramExecutor.layerEmbedded({ filename, tableName: "programs" })
      // First process: creates programs, then stops without running them.
      const runIds = yield* Effect.forEach([1, 2, 3], () => ProgramExecutor.createProgram({ jobs: ["a", "a"] })).pipe(
        Effect.provide(embedded)
      )
      // Second process: a worker on the same file resumes them.
      yield* Effect.gen(function*() {
        yield* Effect.forkScoped(Effect.provideService(Executor.run, ExecutorConfig.ExecutorConfig, workerConfig("w")))
        yield* awaitIdle()
        for (const runId of runIds) {
          expect(Option.getOrThrow(yield* ProgramExecutor.get(runId)).finishedAt).not.toBeNull()
        }
      }).pipe(Effect.scoped, Effect.provide(Layer.merge(embedded, JobLibrary.layer(job))))
      rmSync(filename, { force: true })
    }).pipe(Effect.provide(quiet)), { timeout: 60_000 })

  it.live("a claim or advance made while the application holds a transaction waits for it and is not part of it", () => {
    const tableName = uniqueTable("tx")
    return Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const repository = yield* ProgramRepository
      const program = yield* repository.insert({ runId: "tx-1", jobs: ["a", "b"], programData: {}, jobData: {} })
      const owner = { owner: "w", leaseFor: Duration.seconds(30) }
      const inTransaction = yield* Deferred.make<void>()
      const rollBack = yield* Deferred.make<void>()
      // The application's transaction: it writes, waits, then fails (rolls back).
      const transaction = yield* sql.withTransaction(
        Effect.gen(function*() {
          yield* sql`UPDATE ${sql(tableName)} SET error_message = 'app' WHERE run_id = 'tx-1'`
          yield* Deferred.succeed(inTransaction, undefined)
          yield* Deferred.await(rollBack)
          return yield* Effect.fail("rolled back")
        })
      ).pipe(Effect.exit, Effect.fork)
      yield* Deferred.await(inTransaction)
      const claim = yield* Effect.fork(repository.claim({ runId: program.runId, step: 0 }, owner))
      yield* Effect.yieldNow().pipe(Effect.repeatN(100))
      expect(Option.isNone(yield* Fiber.poll(claim))).toBe(true) // waiting for the transaction
      yield* Deferred.succeed(rollBack, undefined)
      expect(Exit.isFailure(yield* Fiber.join(transaction))).toBe(true)
      const claimed = yield* Fiber.join(claim)
      expect(Option.isSome(claimed)).toBe(true)
      const lease = { runId: program.runId, step: 0, token: Option.getOrThrow(claimed).leaseToken! }
      expect(yield* repository.advance(lease, { finished: false })).toBe(true)
      // Both survived the rollback (they ran after it, outside the transaction); its write did not.
      const row = Option.getOrThrow(yield* repository.get(program.runId))
      expect([row.step, row.lockedBy, row.errorMessage]).toEqual([1, null, null])
    }).pipe(
      Effect.provide(Layer.provideMerge(SqlProgramRepository.layer({ tableName }), database("sqlite", tableName))),
      Effect.ensuring(Effect.sync(() => {
        for (const suffix of ["", "-wal", "-shm"]) rmSync(`${sqliteFile(tableName)}${suffix}`, { force: true })
      }))
    )
  }, { timeout: 30_000 })
})

describeWithService("DATABASE_URL", "PostgreSQL", (url) => {
  backendSuite("pg", url)

  it.live("a publish in one process wakes an idle consumer in another at once (LISTEN/NOTIFY)", () =>
    Effect.gen(function*() {
      const tableName = uniqueTable("notify")
      yield* Effect.addFinalizer(() => dropTable("pg", tableName, url))
      // Two "processes": separate clients and queues. The consumer's poll is far longer than the bound below, so once
      // its first claim has come back empty only a notification can make it claim again within the bound. Its claims
      // are seen through its hot statements: how many rows each returned.
      const claims: Array<number> = []
      const firstClaimEmpty = yield* Deferred.make<void>()
      const countingClaims = Layer.effect(
        PreparedStatements,
        // SqlDatabase.layer carries the hot statements without listing them in its type.
        Effect.map(Effect.map(Effect.serviceOption(PreparedStatements), Option.getOrThrow), (inner) => ({
          run: (text: string, params: ReadonlyArray<unknown>) =>
            inner.run(text, params).pipe(Effect.tap((rows) =>
              Effect.sync(() => claims.push(rows.length)).pipe(
                Effect.zipRight(rows.length === 0 ? Deferred.succeed(firstClaimEmpty, undefined) : Effect.void)
              )
            ))
        }))
      )
      const consumer = yield* Layer.build(
        SqlProgramQueue.layer({ tableName, pollInterval: "10 minutes" }).pipe(
          Layer.provide(countingClaims),
          Layer.provideMerge(SqlDatabase.layer(url))
        )
      )
      // The consumer's LISTEN connection is up before the producer exists (which listens on the same channel): a
      // NOTIFY sent before it would be lost, and the test would time out.
      const listenText = `LISTEN "program_executor_${tableName}"`
      yield* Effect.flatMap(
        SqlClient.SqlClient,
        (sql) =>
          sql<{ readonly n: number }>`
            SELECT count(*)::int AS n FROM pg_stat_activity WHERE query = ${listenText} AND state = 'idle'`
      ).pipe(
        Effect.filterOrFail((rows) => rows[0]!.n > 0, () => new Error(`no session ran ${listenText}`)),
        Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.upTo("10 seconds"))),
        Effect.provide(consumer)
      )
      const producer = yield* Layer.build(
        Layer.merge(SqlProgramRepository.layer({ tableName }), SqlProgramQueue.layer({ tableName })).pipe(
          Layer.provide(SqlDatabase.layer(url))
        )
      )
      const subscription = yield* Effect.flatMap(ProgramQueue, (queue) =>
        queue.subscribe({ prefetch: 2, claim: { owner: "consumer", leaseFor: Duration.seconds(30) } })).pipe(
          Effect.provide(consumer)
        )
      const taking = yield* Effect.fork(subscription.take)
      // Its first claim found nothing: the row below is written after it, so that claim cannot be what finds it.
      yield* Deferred.await(firstClaimEmpty)
      const runId = crypto.randomUUID()
      yield* Effect.gen(function*() {
        const repository = yield* ProgramRepository
        const queue = yield* ProgramQueue
        yield* repository.insert({ runId, jobs: ["a"], programData: {}, jobData: {} })
        yield* queue.publish({ runId, step: 0 })
      }).pipe(Effect.provide(producer))
      const delivery = yield* Fiber.join(taking).pipe(Effect.timeout("5 seconds"))
      expect(delivery.message).toEqual({ runId, step: 0 })
      expect(Option.getOrThrow(delivery.claimed).lockedBy).toBe("consumer")
      // The empty claim, then the one the notification caused.
      expect(claims).toEqual([0, 1])
      yield* delivery.ack
    }).pipe(Effect.scoped), { timeout: 30_000 })

  it.live("on a table never analyzed, claim and advance of one program find it by run_id, not by scanning", () =>
    Effect.gen(function*() {
      const tableName = uniqueTable("plans")
      // The hot statements as sent, each explained first: the plan PostgreSQL picks for exactly that text.
      const plans: Array<{ readonly statement: string; readonly plan: string }> = []
      const explaining = Layer.effect(
        PreparedStatements,
        Effect.map(SqlClient.SqlClient, (sql) => ({
          run: (text: string, params: ReadonlyArray<unknown>) =>
            sql.unsafe(`EXPLAIN (FORMAT JSON) ${text}`, params).withoutTransform.pipe(
              Effect.tap((rows) => plans.push({ statement: text.slice(0, 60), plan: JSON.stringify(rows) })),
              Effect.zipRight(sql.unsafe(text, params).withoutTransform)
            )
        }))
      )
      const repository = Context.get(
        yield* Layer.build(SqlProgramRepository.layer({ tableName }).pipe(
          Layer.provide(explaining),
          Layer.provideMerge(SqlDatabase.layer(url))
        )),
        ProgramRepository
      )
      yield* Effect.addFinalizer(() => dropTable("pg", tableName, url))
      // Enough unfinished rows that reading them all is not the same as reading one.
      const runIds = Array.from({ length: 300 }, () => crypto.randomUUID())
      yield* Effect.forEach(runIds, (runId) => repository.insert({ runId, jobs: ["a", "b"], programData: {}, jobData: {} }), {
        concurrency: 8,
        discard: true
      })
      const runId = runIds[150]!
      const claimed = yield* repository.claim({ runId, step: 0 }, { owner: "w", leaseFor: Duration.seconds(30) })
      expect(Option.isSome(claimed)).toBe(true)
      const token = Option.getOrThrow(claimed).leaseToken!
      expect(yield* repository.advance({ runId, step: 0, token }, { finished: false })).toBe(true)
      const updates = plans.filter((entry) => entry.statement.startsWith("UPDATE"))
      expect(updates.length).toBe(2) // the claim, the advance
      for (const { plan } of updates) expect(plan).toContain(`"Index Name":"${tableName}_run_id_key"`)
    }).pipe(Effect.scoped), { timeout: 30_000 })
})
describeWithService("MYSQL_URL", "MariaDB", (url) => backendSuite("mysql", url))

