/**
 * A `SqlClient` that sends nothing: it records every statement as its dialect's compiler writes it and answers with
 * `answer`. For checks over the SQL itself (what each dialect's statements contain), without a server.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as SqlClient from "@effect/sql/SqlClient"
import type * as SqlConnection from "@effect/sql/SqlConnection"
import * as Statement from "@effect/sql/Statement"
import * as MysqlClient from "@effect/sql-mysql2/MysqlClient"
import * as PgClient from "@effect/sql-pg/PgClient"
import { Effect } from "effect"
import type { PreparedStatementsService } from "../../src/internal/preparedStatements.js"
import type { Dialect } from "../../src/internal/programsTable.js"

export interface Recorded {
  readonly sql: string
  readonly params: ReadonlyArray<unknown>
  /** How it was sent: through the client, or on the prepared path. */
  readonly via: "client" | "prepared"
}

const compilers: Record<Dialect, Statement.Compiler> = {
  pg: PgClient.makeCompiler(),
  mysql: MysqlClient.makeCompiler(),
  sqlite: Statement.makeCompilerSqlite()
}

export const make = (
  dialect: Dialect,
  answer: (sql: string) => ReadonlyArray<object>
) =>
  Effect.gen(function*() {
    const recorded: Array<Recorded> = []
    const rows = (sql: string, params: ReadonlyArray<unknown>, via: Recorded["via"]) => {
      recorded.push({ sql, params, via })
      return answer(sql)
    }
    const connection: SqlConnection.Connection = {
      execute: (sql, params) => Effect.sync(() => rows(sql, params, "client")),
      executeRaw: (sql, params) => Effect.sync(() => ({ affectedRows: rows(sql, params, "client").length })),
      executeValues: (sql, params) => Effect.sync(() => rows(sql, params, "client").map((row) => Object.values(row))),
      executeUnprepared: (sql, params) => Effect.sync(() => rows(sql, params, "client")),
      executeStream: () => Effect.dieMessage("not recorded") as never
    }
    const client = yield* SqlClient.make({
      acquirer: Effect.succeed(connection),
      compiler: compilers[dialect],
      spanAttributes: []
    }).pipe(Effect.provide(Reactivity.layer))
    const prepared: PreparedStatementsService = {
      run: (sql, params) => Effect.sync(() => rows(sql, params, "prepared"))
    }
    return { client, prepared, recorded }
  })
