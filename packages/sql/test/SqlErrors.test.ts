/**
 * The storage error classifier on real errors: each database is made to fail the way it does in production (values
 * out of range, a NUL byte, a deadlock between two transactions, a refused connection), through `SqlDatabase.layer`'s
 * `SqlClient`, so the classifier sees what the executor sees: an `SqlError` around the driver's error.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it, layer } from "@effect/vitest"
import Sqlite from "better-sqlite3"
import { Deferred, Effect, Either, Layer, Logger, LogLevel, Schedule } from "effect"
import { rmSync } from "node:fs"
import { createServer } from "node:net"
import { describeWithService } from "../../core/test/utils/services.js"
import { SqlDatabase } from "../src/index.js"
import { describeSqlError, isTransientSqlError } from "../src/internal/sqlErrors.js"
import { sqliteFile } from "./utils.js"

let counter = 0
const uniqueTable = (prefix: string) =>
  `sqlerr_${prefix}_${Date.now().toString(36)}_${(counter++).toString(36)}_${Math.random().toString(36).slice(2, 6)}`

const classified = (error: unknown) => ({ transient: isTransientSqlError(error), message: describeSqlError(error) })

/** Creates the table, runs `body` with its name, and drops it whatever happened. */
const withTable = <A, E, R>(
  prefix: string,
  columns: string,
  body: (table: string) => Effect.Effect<A, E, R>
) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => {
    const table = uniqueTable(prefix)
    return Effect.acquireUseRelease(
      sql.unsafe(`CREATE TABLE ${table} (${columns})`),
      () => body(table),
      () => Effect.ignore(sql.unsafe(`DROP TABLE IF EXISTS ${table}`))
    )
  })

/** A loopback port nothing listens on: bound by the OS, then released. */
const unusedPort = Effect.promise(() =>
  new Promise<number>((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => resolve(typeof address === "object" && address !== null ? address.port : 0))
    })
  })
)

/** The error of building the database layer once, without the default two minutes of connect retries. */
const connectFailure = (url: string) =>
  Layer.build(SqlDatabase.layer(url, { connectRetry: Schedule.recurs(0) })).pipe(
    Effect.scoped,
    Effect.flip,
    Logger.withMinimumLogLevel(LogLevel.None)
  )

/**
 * Two transactions each lock one row, wait until the other holds its row (a latch, not a sleep), then update the
 * other's row: the database must abort one of them. Returns the victim's error.
 */
const deadlock = (table: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql.unsafe(`INSERT INTO ${table} (id, n) VALUES (1, 0), (2, 0)`)
    const firstLocked = yield* Deferred.make<void>()
    const secondLocked = yield* Deferred.make<void>()
    const transaction = (mine: number, theirs: number, locked: Deferred.Deferred<void>, other: Deferred.Deferred<void>) =>
      sql.withTransaction(Effect.gen(function*() {
        yield* sql.unsafe(`UPDATE ${table} SET n = n + 1 WHERE id = ${mine}`)
        yield* Deferred.succeed(locked, undefined)
        yield* Deferred.await(other)
        yield* sql.unsafe(`UPDATE ${table} SET n = n + 1 WHERE id = ${theirs}`)
      }))
    const outcomes = yield* Effect.all([
      Effect.either(transaction(1, 2, firstLocked, secondLocked)),
      Effect.either(transaction(2, 1, secondLocked, firstLocked))
    ], { concurrency: 2 })
    const victims = outcomes.filter(Either.isLeft).map((outcome) => outcome.left)
    expect(victims).toHaveLength(1)
    return victims[0]
  })

describe("isTransientSqlError without a database", () => {
  const cases: ReadonlyArray<readonly [string, unknown, boolean]> = [
    ["pg: Connection terminated unexpectedly", new Error("Connection terminated unexpectedly"), true],
    ["pg: Connection terminated", new Error("Connection terminated"), true],
    ["pg-pool: connect timeout", new Error("timeout exceeded when trying to connect"), true],
    ["pg: Query read timeout", new Error("Query read timeout"), true],
    ["pg-pool: ended pool", new Error("Cannot use a pool after calling end on the pool"), true],
    ["pg: closed client", new Error("Client was closed and is not queryable"), true],
    ["a bare timeout", new Error("timeout"), true],
    ["node: ECONNRESET", Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET", errno: -104 }), true],
    ["node: EPIPE (not an SQLSTATE)", Object.assign(new Error("write EPIPE"), { code: "EPIPE", errno: -32 }), true],
    ["node: EAI_AGAIN", Object.assign(new Error("getaddrinfo EAI_AGAIN db"), { code: "EAI_AGAIN" }), true],
    [
      "node: AggregateError of refused addresses",
      new AggregateError([Object.assign(new Error("connect ECONNREFUSED ::1:5432"), { code: "ECONNREFUSED" })], ""),
      true
    ],
    ["pg: 53300 too many connections", Object.assign(new Error("sorry, too many clients already"), { code: "53300" }), true],
    ["pg: 57P03 cannot connect now", Object.assign(new Error("the database system is starting up"), { code: "57P03" }), true],
    ["pg: 08006 connection failure", Object.assign(new Error("connection failure"), { code: "08006" }), true],
    ["pg: 40001 serialization failure", Object.assign(new Error("could not serialize"), { code: "40001" }), true],
    ["pg: 55P03 lock not available", Object.assign(new Error("could not obtain lock"), { code: "55P03" }), true],
    ["pg: 23502 not null", Object.assign(new Error("null value in column"), { code: "23502" }), false],
    ["pg: 42P01 undefined table", Object.assign(new Error("relation does not exist"), { code: "42P01" }), false],
    [
      "mysql2: PROTOCOL_CONNECTION_LOST",
      Object.assign(new Error("Connection lost: The server closed the connection."), { code: "PROTOCOL_CONNECTION_LOST", fatal: true }),
      true
    ],
    [
      "mysql: 1205 lock wait timeout",
      Object.assign(new Error("Lock wait timeout exceeded"), { code: "ER_LOCK_WAIT_TIMEOUT", errno: 1205, sqlState: "HY000" }),
      true
    ],
    [
      "mysql: 2013 lost connection",
      Object.assign(new Error("Lost connection"), { code: "CR_SERVER_LOST", errno: 2013, sqlState: "HY000" }),
      true
    ],
    [
      "mysql: 1406 data too long",
      Object.assign(new Error("Data too long for column 'name'"), { code: "ER_DATA_TOO_LONG", errno: 1406, sqlState: "22001" }),
      false
    ],
    [
      "mysql: 1366 incorrect string value",
      Object.assign(new Error("Incorrect string value"), { code: "ER_TRUNCATED_WRONG_VALUE_FOR_FIELD", errno: 1366, sqlState: "22007" }),
      false
    ],
    [
      "mysql: 3140 invalid JSON",
      Object.assign(new Error("Invalid JSON text"), { code: "ER_INVALID_JSON_TEXT", errno: 3140, sqlState: "22032" }),
      false
    ],
    ["sqlite: SQLITE_BUSY_SNAPSHOT", Object.assign(new Error("database is locked"), { code: "SQLITE_BUSY_SNAPSHOT" }), true],
    ["sqlite: SQLITE_MISMATCH", Object.assign(new Error("datatype mismatch"), { code: "SQLITE_MISMATCH" }), false],
    ["a bare error", new Error("boom"), false],
    ["a string", "boom", false],
    ["nothing", undefined, false]
  ]
  for (const [name, error, transient] of cases) {
    it(`${name}: ${transient ? "transient" : "data-class"}`, () => {
      expect(isTransientSqlError(error)).toBe(transient)
    })
  }

  it("describeSqlError prefers the driver's message and code to the wrapper's", () => {
    const cause = Object.assign(new Error("integer out of range"), { code: "22003" })
    expect(describeSqlError(new Error("Failed to execute statement", { cause }))).toBe("integer out of range (SQLSTATE 22003)")
    expect(describeSqlError(new Error("plain"))).toBe("plain")
  })
})

describeWithService("DATABASE_URL", "PostgreSQL errors", (url) => {
  layer(SqlDatabase.layer(url), { timeout: "60 seconds", excludeTestServices: true })(
    "through SqlDatabase.layer",
    (it) => {
    it.effect("int4 out of range is data-class", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const error = yield* Effect.flip(sql.unsafe("SELECT $1::int4 AS step", [2147483648]))
        expect(error._tag).toBe("SqlError")
        expect(classified(error)).toEqual({
          transient: false,
          message: "value \"2147483648\" is out of range for type integer (SQLSTATE 22003)"
        })
      }))

    it.effect("a NUL character in a text is data-class", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const error = yield* Effect.flip(sql.unsafe("SELECT $1::text AS t", ["a\u0000b"]))
        expect(classified(error)).toEqual({
          transient: false,
          message: "invalid byte sequence for encoding \"UTF8\": 0x00 (SQLSTATE 22021)"
        })
      }))

    it.effect("a unique violation is data-class", () =>
      withTable("pg_unique", "id INT PRIMARY KEY", (table) =>
        Effect.gen(function*() {
          const sql = yield* SqlClient.SqlClient
          yield* sql.unsafe(`INSERT INTO ${table} (id) VALUES (1)`)
          const error = yield* Effect.flip(sql.unsafe(`INSERT INTO ${table} (id) VALUES (1)`))
          const { message, transient } = classified(error)
          expect(transient).toBe(false)
          expect(message).toContain("duplicate key value violates unique constraint")
          expect(message).toContain("Key (id)=(1) already exists.")
          expect(message).toContain("(SQLSTATE 23505)")
        })))

    it.effect("a syntax error is data-class", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const error = yield* Effect.flip(sql.unsafe("SELEC 1"))
        expect(classified(error)).toEqual({ transient: false, message: "syntax error at or near \"SELEC\" (SQLSTATE 42601)" })
      }))

    it.effect("a deadlock between two transactions is transient", () =>
      withTable("pg_deadlock", "id INT PRIMARY KEY, n INT NOT NULL", (table) =>
        Effect.gen(function*() {
          const error = yield* deadlock(table)
          const { message, transient } = classified(error)
          expect(transient).toBe(true)
          expect(message).toMatch(/^deadlock detected: .*\(SQLSTATE 40P01\)$/s)
        })))

    it.effect("a statement timeout is transient", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        // SET LOCAL: the setting ends with the transaction and does not stay on the pooled connection.
        const error = yield* Effect.flip(sql.withTransaction(
          Effect.zipRight(sql.unsafe("SET LOCAL statement_timeout = 50"), sql.unsafe("SELECT pg_sleep(1)"))
        ))
        expect(classified(error)).toEqual({
          transient: true,
          message: "canceling statement due to statement timeout (SQLSTATE 57014)"
        })
      }))

    it.effect("a terminated backend is transient, and a retry reaches a new connection", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const error = yield* Effect.flip(sql.unsafe("SELECT pg_terminate_backend(pg_backend_pid())"))
        expect(classified(error)).toEqual({
          transient: true,
          message: "terminating connection due to administrator command (SQLSTATE 57P01)"
        })
        // The pool may hand out the dying connection once more before its socket closes ("Connection terminated
        // unexpectedly"): a retry while the error is transient, as the executor does, reaches a new connection.
        const rows = yield* sql.unsafe("SELECT 1 AS one").pipe(Effect.retry({ while: isTransientSqlError, times: 3 }))
        expect(rows).toEqual([{ one: 1 }])
      }))
    }
  )

  it.live("a refused connection is transient", () =>
    Effect.gen(function*() {
      const port = yield* unusedPort
      const error = yield* connectFailure(`postgres://postgres@127.0.0.1:${port}/test`)
      expect(error._tag).toBe("SqlError")
      expect(classified(error)).toEqual({ transient: true, message: `connect ECONNREFUSED 127.0.0.1:${port}` })
    }))
})

describeWithService("MYSQL_URL", "MySQL / MariaDB errors", (url) => {
  layer(SqlDatabase.layer(url), { timeout: "60 seconds", excludeTestServices: true })(
    "through SqlDatabase.layer",
    (it) => {
    it.effect("an out of range INT (strict mode) is data-class", () =>
      withTable("my_range", "id INT PRIMARY KEY, n INT NOT NULL", (table) =>
        Effect.gen(function*() {
          const sql = yield* SqlClient.SqlClient
          const error = yield* Effect.flip(sql.unsafe(`INSERT INTO ${table} (id, n) VALUES (1, ?)`, [2147483648]))
          expect(classified(error)).toEqual({
            transient: false,
            message: "Out of range value for column 'n' at row 1 (errno 1264, SQLSTATE 22003)"
          })
        })))

    it.effect("invalid JSON is data-class", () =>
      withTable("my_json", "id INT PRIMARY KEY, j JSON", (table) =>
        Effect.gen(function*() {
          const sql = yield* SqlClient.SqlClient
          const error = yield* Effect.flip(sql.unsafe(`INSERT INTO ${table} (id, j) VALUES (1, ?)`, ["{nope"]))
          // MariaDB: JSON is a CHECK (errno 4025, SQLSTATE 23000); MySQL: ER_INVALID_JSON_TEXT (3140, 22032).
          const { message, transient } = classified(error)
          expect(transient).toBe(false)
          expect(message).toMatch(/\(errno (4025|3140), SQLSTATE (23000|22032)\)$/)
        })))

    it.effect("a duplicate key is data-class", () =>
      withTable("my_unique", "id INT PRIMARY KEY", (table) =>
        Effect.gen(function*() {
          const sql = yield* SqlClient.SqlClient
          yield* sql.unsafe(`INSERT INTO ${table} (id) VALUES (1)`)
          const error = yield* Effect.flip(sql.unsafe(`INSERT INTO ${table} (id) VALUES (1)`))
          expect(classified(error)).toEqual({
            transient: false,
            message: "Duplicate entry '1' for key 'PRIMARY' (errno 1062, SQLSTATE 23000)"
          })
        })))

    it.effect("a deadlock between two transactions is transient", () =>
      withTable("my_deadlock", "id INT PRIMARY KEY, n INT NOT NULL", (table) =>
        Effect.gen(function*() {
          const error = yield* deadlock(table)
          const { message, transient } = classified(error)
          expect(transient).toBe(true)
          expect(message).toMatch(/^Deadlock found when trying to get lock.*\(errno 1213, SQLSTATE 40001\)$/)
        })))
    }
  )

  it.live("a refused connection is transient", () =>
    Effect.gen(function*() {
      const port = yield* unusedPort
      const error = yield* connectFailure(`mysql://root@127.0.0.1:${port}/test`)
      expect(error._tag).toBe("SqlError")
      expect(classified(error)).toEqual({ transient: true, message: `connect ECONNREFUSED 127.0.0.1:${port}` })
    }))
})

describe("SQLite errors", () => {
  /** A database file of its own, with no busy timeout, removed after the test. */
  const sqlite = <A, E>(name: string, body: (file: string) => Effect.Effect<A, E, SqlClient.SqlClient>) => {
    const file = sqliteFile(uniqueTable(name))
    return body(file).pipe(
      Effect.provide(SqlDatabase.layerSqlite(file, { busyTimeout: 0 })),
      Effect.ensuring(Effect.sync(() => {
        for (const suffix of ["", "-wal", "-shm"]) rmSync(`${file}${suffix}`, { force: true })
      }))
    )
  }

  it.live("a constraint violation is data-class", () =>
    sqlite("lite_unique", () =>
      withTable("lite_unique", "id INTEGER PRIMARY KEY, name TEXT NOT NULL", (table) =>
        Effect.gen(function*() {
          const sql = yield* SqlClient.SqlClient
          yield* sql.unsafe(`INSERT INTO ${table} (id, name) VALUES (1, 'a')`)
          const duplicate = yield* Effect.flip(sql.unsafe(`INSERT INTO ${table} (id, name) VALUES (1, 'b')`))
          expect(classified(duplicate)).toEqual({
            transient: false,
            message: `UNIQUE constraint failed: ${table}.id (SQLITE_CONSTRAINT_PRIMARYKEY)`
          })
          const missing = yield* Effect.flip(sql.unsafe(`INSERT INTO ${table} (id, name) VALUES (2, NULL)`))
          expect(classified(missing)).toEqual({
            transient: false,
            message: `NOT NULL constraint failed: ${table}.name (SQLITE_CONSTRAINT_NOTNULL)`
          })
        }))))

  it.live("SQLITE_BUSY while another connection holds the write lock is transient", () =>
    sqlite("lite_busy", (file) =>
      withTable("lite_busy", "id INTEGER PRIMARY KEY", (table) =>
        Effect.gen(function*() {
          const sql = yield* SqlClient.SqlClient
          const error = yield* Effect.acquireUseRelease(
            Effect.sync(() => {
              const holder = new Sqlite(file)
              holder.exec("BEGIN IMMEDIATE")
              return holder
            }),
            () => Effect.flip(sql.unsafe(`INSERT INTO ${table} (id) VALUES (1)`)),
            (holder) => Effect.sync(() => {
              holder.exec("ROLLBACK")
              holder.close()
            })
          )
          expect(classified(error)).toEqual({ transient: true, message: "database is locked (SQLITE_BUSY)" })
        }))))
})
