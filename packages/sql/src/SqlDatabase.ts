/**
 * A `SqlClient` chosen by the URL's scheme: `postgres://` / `postgresql://` (PostgreSQL), `mysql://` / `mariadb://`
 * (MySQL, MariaDB), `sqlite:PATH` / `file:PATH` (SQLite, in WAL mode with synchronous=NORMAL and a busy timeout).
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import * as MysqlClient from "@effect/sql-mysql2/MysqlClient"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import { Url } from "@program-executor/core"
import Pg from "pg"
import * as afterCommit from "./internal/afterCommit.js"
import * as preparedStatements from "./internal/preparedStatements.js"
import { PreparedStatements } from "./internal/preparedStatements.js"
import * as sqliteClient from "./internal/sqliteClient.js"

/** The URL names no supported database, or cannot be parsed. The message never contains its password. */
export class InvalidDatabaseUrlError extends Schema.TaggedError<InvalidDatabaseUrlError>()("InvalidDatabaseUrlError", {
  message: Schema.String
}) {}

export interface Options {
  /**
   * How long to keep trying to connect when the database does not answer at start (a worker started before its
   * database). Default: exponential from 200 ms, capped at 5 s between attempts, for up to 2 minutes.
   */
  readonly connectRetry?: Schedule.Schedule<unknown, unknown>
  /** SQLite: how long a writer waits for another process's lock. Default 5 seconds. */
  readonly busyTimeout?: Duration.DurationInput
  /** PostgreSQL: the pool's size. Default 10. */
  readonly maxConnections?: number
}

export const defaultConnectRetry: Schedule.Schedule<unknown, unknown> = Schedule.exponential("200 millis", 2).pipe(
  Schedule.modifyDelay((delay) => Duration.min(delay, Duration.seconds(5))),
  Schedule.upTo("2 minutes")
)

/** The URL as it may be shown: its password and secret query parameters replaced by `***` (see `Url.redact`). */
export const redactUrl = (url: string): string => Url.redact(url)

export type Target =
  | { readonly _tag: "pg"; readonly url: Redacted.Redacted }
  | {
    readonly _tag: "mysql"
    readonly host: string
    readonly port: number
    readonly database: string | undefined
    readonly username: string | undefined
    readonly password: Redacted.Redacted | undefined
  }
  | { readonly _tag: "sqlite"; readonly filename: string }

const unparsable = "it cannot be parsed; a user name or password containing / ? # @ : or % must be percent-encoded " +
  "(encodeURIComponent)"

/** Which database a URL names; fails with a message that never shows the password. */
export const parseUrl = (url: string | Redacted.Redacted): Effect.Effect<Target, InvalidDatabaseUrlError> =>
  Effect.suspend((): Effect.Effect<Target, InvalidDatabaseUrlError> => {
    const raw = (Redacted.isRedacted(url) ? Redacted.value(url) : url).trim()
    const invalid = (why: string) =>
      Effect.fail(new InvalidDatabaseUrlError({ message: `invalid database URL ${redactUrl(raw)}: ${why}` }))
    const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(raw)?.[1]?.toLowerCase()
    switch (scheme) {
      case "postgres":
      case "postgresql": {
        if (Url.parseSafely(raw) === undefined) return invalid(unparsable)
        return Effect.succeed({ _tag: "pg", url: Redacted.make(raw) } as const)
      }
      case "mysql":
      case "mariadb": {
        const parsed = Url.parseSafely(raw)
        if (parsed === undefined) return invalid(unparsable)
        if (parsed.hostname === "") return invalid("it names no host")
        const database = decodeURIComponent(parsed.pathname.replace(/^\//, ""))
        return Effect.succeed({
          _tag: "mysql",
          host: parsed.hostname,
          port: parsed.port === "" ? 3306 : Number(parsed.port),
          database: database === "" ? undefined : database,
          username: parsed.username === "" ? undefined : decodeURIComponent(parsed.username),
          password: parsed.password === "" ? undefined : Redacted.make(decodeURIComponent(parsed.password))
        } as const)
      }
      case "sqlite":
      case "file": {
        let filename = raw.slice(scheme.length + 1)
        if (filename.startsWith("//")) filename = filename.slice(2)
        if (filename === "") return invalid("it names no file (sqlite:PATH, or sqlite::memory:)")
        return Effect.succeed({ _tag: "sqlite", filename } as const)
      }
      default:
        return invalid(
          "use postgres://, postgresql://, mysql://, mariadb://, sqlite:PATH or file:PATH"
        )
    }
  })

/**
 * SQLite tuned for the executor: WAL, synchronous=NORMAL, a busy timeout. The layer also carries the connection's
 * prepared hot statements (internal; see `PreparedStatements`), which the repository and queue layers pick up.
 */
export const layerSqlite = (
  filename: string,
  options: Pick<Options, "busyTimeout"> = {}
): Layer.Layer<SqlClient.SqlClient, SqlError> =>
  Layer.scopedContext(Effect.map(
    sqliteClient.make({
      filename,
      busyTimeoutMillis: Duration.toMillis(Duration.decode(options.busyTimeout ?? "5 seconds"))
    }),
    ({ client, prepared }) =>
      Context.make(SqlClient.SqlClient, afterCommit.install(client)).pipe(Context.add(PreparedStatements, prepared))
  )).pipe(Layer.provide(Reactivity.layer))

/**
 * PostgreSQL on a `pg` pool of our own, shared by the `SqlClient` and the executor's named hot statements. The pool
 * holds `maxConnections` connections (default 10, as `pg`'s).
 */
const layerPg = (url: Redacted.Redacted, options: Options): Layer.Layer<SqlClient.SqlClient, SqlError> =>
  Layer.scopedContext(Effect.gen(function*() {
    const pool = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: async () => {
          const pool = new Pg.Pool({
            connectionString: Redacted.value(url),
            application_name: "program-executor",
            max: options.maxConnections ?? 10,
            connectionTimeoutMillis: 5_000
          })
          // An idle connection the server dropped: the pool replaces it; nothing to crash for.
          pool.on("error", () => {})
          try {
            await pool.query("SELECT 1")
          } catch (cause) {
            await pool.end().catch(() => undefined)
            throw cause
          }
          return pool
        },
        catch: (cause) => new SqlError({ cause, message: "PgClient: Failed to connect" })
      }),
      (pool) => Effect.promise(() => pool.end().catch(() => undefined)).pipe(Effect.timeoutOption("1 second"))
    )
    const client = afterCommit.install(yield* PgClient.fromPool({ acquire: Effect.succeed(pool) }))
    return Context.make(PgClient.PgClient, client).pipe(
      Context.add(SqlClient.SqlClient, client),
      Context.add(PreparedStatements, preparedStatements.onPgPool(pool))
    )
  })).pipe(Layer.provide(Reactivity.layer))

const clientLayer = (target: Target, options: Options): Layer.Layer<SqlClient.SqlClient, SqlError> => {
  switch (target._tag) {
    case "pg":
      return layerPg(target.url, options)
    case "mysql":
      return Layer.scopedContext(Effect.map(MysqlClient.make({
        host: target.host,
        port: target.port,
        ...(target.database === undefined ? {} : { database: target.database }),
        ...(target.username === undefined ? {} : { username: target.username }),
        ...(target.password === undefined ? {} : { password: target.password }),
        // Timestamps are UTC_TIMESTAMP(3) in DATETIME columns: read and write them as UTC.
        poolConfig: { timezone: "Z" }
      }), (made) => {
        const client = afterCommit.install(made)
        return Context.make(MysqlClient.MysqlClient, client).pipe(Context.add(SqlClient.SqlClient, client))
      })).pipe(
        Layer.provide(Reactivity.layer)
      )
    case "sqlite":
      return layerSqlite(target.filename, options)
  }
}

/**
 * The database named by `url`. A server that does not answer yet is retried (`connectRetry`); a bad URL fails at
 * once with `InvalidDatabaseUrlError`.
 */
export const layer = (
  url: string | Redacted.Redacted,
  options: Options = {}
): Layer.Layer<SqlClient.SqlClient, InvalidDatabaseUrlError | SqlError> =>
  Layer.unwrapEffect(Effect.map(parseUrl(url), (target) => {
    const shown = target._tag === "sqlite" ? `sqlite:${target.filename}` : redactUrl(Redacted.value(Redacted.isRedacted(url) ? url : Redacted.make(url)))
    return clientLayer(target, options).pipe(
      Layer.tapErrorCause(() => Effect.logWarning(`database ${shown} is not answering yet; retrying`)),
      Layer.retry(options.connectRetry ?? defaultConnectRetry)
    )
  }))
