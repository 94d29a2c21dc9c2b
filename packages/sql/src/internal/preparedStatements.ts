/**
 * The executor's few hot statements (claim, claim-next, advance, insert) run by their SQL text, prepared once per
 * connection, beside the `SqlClient` and on the same database. The text is compiled once from the same fragments as
 * every other statement (`compileOnce` in `programsTable.ts`), so there is one definition of each. Through @effect/sql each statement pays for a span, a scope, a compile and a
 * cache lookup by hashing its text: about 25 µs, as much as SQLite needs to run it (BENCHMARKS.md). PostgreSQL gets
 * named (prepared) statements, which @effect/sql-pg does not send: the server plans each once per connection.
 *
 * `SqlDatabase.layer` provides this for PostgreSQL and SQLite. Without it (a `SqlClient` built elsewhere, MySQL) the
 * statements go through the client as any other.
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import type Pg from "pg"
import { createHash } from "node:crypto"

export interface PreparedStatementsService {
  /** Runs `sql` (placeholders `$1…` on PostgreSQL, `?` elsewhere) and returns its rows, untransformed. */
  readonly run: (sql: string, params: ReadonlyArray<unknown>) => Effect.Effect<ReadonlyArray<any>, SqlError>
}

export class PreparedStatements extends Context.Tag("@program-executor/sql/PreparedStatements")<
  PreparedStatements,
  PreparedStatementsService
>() {}

/** Through the client, like any statement: for databases and clients this package does not own. */
export const viaClient = (sql: SqlClient.SqlClient): PreparedStatementsService => ({
  run: (text, params) => sql.unsafe(text, params).withoutTransform
})

/**
 * The longest a hot statement (a single-row claim, advance or insert) may go unanswered before it fails as a
 * connection error and is retried: a connection that hangs (a server that vanished without closing it) must not hold
 * a step forever. Far above what any of them takes on a healthy server.
 */
const statementTimeoutMillis = 30_000

/** Named statements on a `pg` pool: each connection prepares a text once and then only binds and executes it. */
export const onPgPool = (pool: Pg.Pool): PreparedStatementsService => {
  const names = new Map<string, string>()
  const nameOf = (text: string) => {
    let name = names.get(text)
    if (name === undefined) {
      name = `program_executor_${createHash("sha1").update(text).digest("hex").slice(0, 16)}`
      names.set(text, name)
    }
    return name
  }
  return {
    run: (text, params) =>
      Effect.async<ReadonlyArray<any>, SqlError>((resume) => {
        // `query_timeout` per query is honoured by pg's client, though its types only know it as a client option.
        const query = { name: nameOf(text), text, values: params as Array<unknown>, query_timeout: statementTimeoutMillis }
        pool.query(query as Pg.QueryConfig, (error, result) => {
          if (error) resume(Effect.fail(new SqlError({ cause: error, message: "Failed to execute statement" })))
          else resume(Effect.succeed(result.rows))
        })
      })
  }
}
