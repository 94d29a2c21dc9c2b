/** A real server on an ephemeral port over a real database, one table per test, and `fetch` to talk to it. */
import * as HttpServer from "@effect/platform/HttpServer"
import { ProgramEvents, ProgramExecutor } from "@program-executor/core"
import { Context, Effect, Layer } from "effect"
import { serviceUrl } from "../../core/test/utils/services.js"
import { SqlClient } from "@effect/sql"
import { type Backend, database, execute, storage } from "../../sql/test/utils.js"
import { ProgramsHttp } from "../src/index.js"

export interface Target {
  readonly backend: Backend
  readonly url: string | undefined
}

/** SQLite always; PostgreSQL and MariaDB where their URLs are set (required under CI). */
export const targets = (): ReadonlyArray<Target> => {
  const found: Array<Target> = [{ backend: "sqlite", url: undefined }]
  const pg = serviceUrl("DATABASE_URL")
  if (pg !== undefined) found.push({ backend: "pg", url: pg })
  const mysql = serviceUrl("MYSQL_URL")
  if (mysql !== undefined) found.push({ backend: "mysql", url: mysql })
  return found
}

let counter = 0
export const uniqueTable = (prefix: string) =>
  `${prefix}_${Date.now().toString(36)}_${(counter++).toString(36)}_${Math.random().toString(36).slice(2, 6)}`

/** The executor's services over one fresh table, with events on. */
export const services = (target: Target, table: string) =>
  ProgramExecutor.layer.pipe(
    Layer.provideMerge(storage(target.backend, target.url)(table)),
    Layer.provideMerge(ProgramEvents.layer())
  )

export interface Server {
  readonly base: string
  readonly table: string
  /** Runs a raw statement on the test's database (rows changed by hand). */
  readonly sql: (statement: string) => Effect.Effect<void, unknown>
  /** The rows of a raw query, as the driver returns them. */
  readonly rows: (statement: string) => Effect.Effect<ReadonlyArray<Record<string, unknown>>, unknown>
}

/** Starts `ProgramsHttp.serve` on port 0 for the scope of the test. */
export const startServer = (target: Target, options: ProgramsHttp.ServeOptions = {}) =>
  Effect.gen(function*() {
    const table = uniqueTable("http")
    const context = yield* Layer.build(
      ProgramsHttp.serve({ ...options, port: 0 }).pipe(Layer.provideMerge(services(target, table)))
    )
    const address = Context.get(context, HttpServer.HttpServer).address
    if (address._tag !== "TcpAddress") return yield* Effect.die("not a TCP server")
    const server: Server = {
      base: `http://127.0.0.1:${address.port}`,
      table,
      sql: (statement) => execute(target.backend, target.url)(table, statement),
      rows: (statement) =>
        Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe<Record<string, unknown>>(statement).withoutTransform)
          .pipe(Effect.provide(database(target.backend, table, target.url)))
    }
    return { server, context }
  })

export interface Reply {
  readonly status: number
  readonly headers: Headers
  readonly body: any
  readonly text: string
}

/** One request; a JSON body is sent with its content type. */
export const call = (
  base: string,
  method: string,
  path: string,
  options: { readonly body?: unknown; readonly headers?: Record<string, string>; readonly raw?: string } = {}
): Effect.Effect<Reply> =>
  Effect.promise(async () => {
    const headers: Record<string, string> = { ...options.headers }
    let body: string | undefined = options.raw
    if (options.body !== undefined) {
      headers["content-type"] ??= "application/json"
      body = JSON.stringify(options.body)
    }
    const response = await fetch(`${base}${path}`, {
      method,
      headers,
      redirect: "manual",
      ...(body === undefined ? {} : { body })
    })
    const text = await response.text()
    let parsed: unknown = undefined
    try {
      parsed = JSON.parse(text)
    } catch {
      // not JSON: `text` has it
    }
    return { status: response.status, headers: response.headers, body: parsed, text }
  })
