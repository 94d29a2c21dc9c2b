/**
 * A `SqlClient` for SQLite on a better-sqlite3 connection this package owns, so that the executor's hot statements
 * can run on the same connection without @effect/sql's per-statement machinery (see `PreparedStatements`). Built
 * like `@effect/sql-sqlite-node`'s client: one connection, statements prepared once and cached, transactions holding
 * the connection while they are open.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as SqlClient from "@effect/sql/SqlClient"
import type * as SqlConnection from "@effect/sql/SqlConnection"
import { SqlError } from "@effect/sql/SqlError"
import * as Statement from "@effect/sql/Statement"
import Sqlite from "better-sqlite3"
import * as Effect from "effect/Effect"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type { PreparedStatementsService } from "./preparedStatements.js"

export interface SqliteOptions {
  readonly filename: string
  /** How long a writer waits for another process's lock, in milliseconds. */
  readonly busyTimeoutMillis: number
}

/** Prepared statements kept per connection; beyond this many distinct texts the least recently used is dropped. */
const statementCacheSize = 200

export const make = (
  options: SqliteOptions
): Effect.Effect<{ readonly client: SqlClient.SqlClient; readonly prepared: PreparedStatementsService }, SqlError, Scope.Scope | Reactivity.Reactivity> =>
  Effect.gen(function*() {
    const db = yield* Effect.acquireRelease(
      Effect.try({
        try: () => {
          const db = new Sqlite(options.filename)
          db.pragma("journal_mode = WAL")
          db.pragma("synchronous = NORMAL")
          db.pragma(`busy_timeout = ${Math.max(0, Math.round(options.busyTimeoutMillis))}`)
          return db
        },
        catch: (cause) => new SqlError({ cause, message: `could not open SQLite database ${options.filename}` })
      }),
      (db) => Effect.sync(() => db.close())
    )

    const cache = new Map<string, Sqlite.Statement>()
    const prepare = (sql: string): Sqlite.Statement => {
      let statement = cache.get(sql)
      if (statement !== undefined) {
        // Re-inserted: a Map iterates in insertion order, so the first key is the least recently used.
        cache.delete(sql)
      } else {
        statement = db.prepare(sql)
        if (cache.size >= statementCacheSize) cache.delete(cache.keys().next().value!)
      }
      cache.set(sql, statement)
      return statement
    }
    const runSync = (statement: Sqlite.Statement, params: ReadonlyArray<unknown>, raw: boolean): ReadonlyArray<any> | unknown =>
      statement.reader ? statement.all(...params) : raw ? statement.run(...params) : (statement.run(...params), [])
    const run = (sql: string, params: ReadonlyArray<unknown>, raw: boolean, unprepared = false) =>
      Effect.try({
        try: () => runSync(unprepared ? db.prepare(sql) : prepare(sql), params, raw),
        catch: (cause) => new SqlError({ cause, message: "Failed to execute statement" })
      })

    const connection: SqlConnection.Connection = {
      execute: (sql, params, transformRows) =>
        Effect.map(run(sql, params, false), (rows) =>
          transformRows ? transformRows(rows as ReadonlyArray<object>) : rows as ReadonlyArray<any>),
      executeRaw: (sql, params) => run(sql, params, true),
      executeValues: (sql, params) =>
        Effect.try({
          try: () => {
            const statement = prepare(sql)
            if (!statement.reader) {
              statement.run(...params)
              return []
            }
            try {
              return statement.raw(true).all(...params) as ReadonlyArray<ReadonlyArray<unknown>>
            } finally {
              statement.raw(false)
            }
          },
          catch: (cause) => new SqlError({ cause, message: "Failed to execute statement" })
        }),
      executeUnprepared: (sql, params, transformRows) =>
        Effect.map(run(sql, params, false, true), (rows) =>
          transformRows ? transformRows(rows as ReadonlyArray<object>) : rows as ReadonlyArray<any>),
      executeStream: () => Stream.die(new Error("executeStream is not implemented for SQLite"))
    }

    // Statements run synchronously, so they never interleave; only a transaction holds the connection across
    // asynchronous steps, and everything else waits for it.
    const lock = yield* Effect.makeSemaphore(1)
    let transactionOpen = false
    const acquirer = lock.withPermits(1)(Effect.succeed(connection))
    const transactionAcquirer = Effect.uninterruptibleMask((restore) =>
      Effect.zipRight(
        restore(lock.take(1)),
        Effect.flatMap(Effect.scope, (scope) =>
          Effect.as(
            Effect.zipRight(
              Effect.sync(() => {
                transactionOpen = true
              }),
              Scope.addFinalizer(
                scope,
                Effect.zipRight(
                  Effect.sync(() => {
                    transactionOpen = false
                  }),
                  lock.release(1)
                )
              )
            ),
            connection
          ))
      )
    )

    const client = yield* SqlClient.make({
      acquirer,
      compiler: Statement.makeCompilerSqlite(),
      transactionAcquirer,
      spanAttributes: [["db.system.name", "sqlite"]]
    })

    const prepared: PreparedStatementsService = {
      run: (sql, params) => {
        const direct = run(sql, params, false) as Effect.Effect<ReadonlyArray<any>, SqlError>
        // Outside a transaction the statement runs at once, exactly as the client's own statements do.
        return Effect.suspend(() => transactionOpen ? lock.withPermits(1)(direct) : direct)
      }
    }
    return { client, prepared }
  })
