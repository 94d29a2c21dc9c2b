/**
 * Which storage errors are worth retrying. The executor retries a storage error for a while and then nacks the
 * message, so an error the data causes (an integer out of range, a NUL byte in a text) must not be retried: the same
 * statement with the same values fails the same way every time, and the message would loop forever.
 *
 * The first error in the `cause` chain (an `SqlError`, then the driver's error, …) that carries a code the database
 * or Node defined decides. Only errors with no such code anywhere fall back to their messages.
 */

const nodeSocketCodes = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "EHOSTDOWN",
  "ENETUNREACH",
  "ENETDOWN",
  "ECONNABORTED",
  "ESOCKETTIMEDOUT"
])

/**
 * PostgreSQL SQLSTATEs (also MySQL's `sqlState`) about the connection or the server's state. 28 (authorization) and
 * 3D000 (no such database) are raised while connecting, before any statement ran: the data cannot be at fault, and
 * failing the program for a misconfigured worker would lose it.
 */
const transientSqlStateClasses = new Set(["08", "28", "53", "58"])
const transientSqlStates = new Set([
  "40001", // serialization_failure
  "40P01", // deadlock_detected
  "55P03", // lock_not_available
  "57014", // query_canceled: a statement timeout, or a cancel on shutdown
  "57P01", // admin_shutdown
  "57P02", // crash_shutdown
  "57P03", // cannot_connect_now: starting up, in recovery
  "57P05", // idle_session_timeout
  "3D000", // invalid_catalog_name
  "25006" // read_only_sql_transaction: a standby, e.g. during a failover
])

/** MySQL / MariaDB server and client errnos about the connection, locks, or resources. */
const transientMysqlErrnos = new Set([
  1021, // ER_DISK_FULL
  1037, // ER_OUTOFMEMORY
  1038, // ER_OUT_OF_SORTMEMORY
  1040, // ER_CON_COUNT_ERROR: too many connections
  1041, // ER_OUT_OF_RESOURCES
  1044, // ER_DBACCESS_DENIED_ERROR (while connecting)
  1045, // ER_ACCESS_DENIED_ERROR (while connecting)
  1049, // ER_BAD_DB_ERROR (while connecting)
  1053, // ER_SERVER_SHUTDOWN
  1077, // ER_NORMAL_SHUTDOWN
  1078, // ER_GOT_SIGNAL
  1079, // ER_SHUTDOWN_COMPLETE
  1135, // ER_CANT_CREATE_THREAD
  1152, // ER_ABORTING_CONNECTION
  1158, // ER_NET_READ_ERROR
  1159, // ER_NET_READ_INTERRUPTED
  1160, // ER_NET_ERROR_ON_WRITE
  1161, // ER_NET_WRITE_INTERRUPTED
  1203, // ER_TOO_MANY_USER_CONNECTIONS
  1205, // ER_LOCK_WAIT_TIMEOUT
  1213, // ER_LOCK_DEADLOCK
  1226, // ER_USER_LIMIT_REACHED
  1290, // ER_OPTION_PREVENTS_STATEMENT: --read-only, e.g. a replica during a failover
  1317, // ER_QUERY_INTERRUPTED
  1836, // ER_READ_ONLY_MODE
  1927, // MariaDB ER_CONNECTION_KILLED
  1969, // MariaDB ER_STATEMENT_TIMEOUT (max_statement_time)
  2002, // CR_CONNECTION_ERROR
  2003, // CR_CONN_HOST_ERROR
  2006, // CR_SERVER_GONE_ERROR
  2013, // CR_SERVER_LOST
  2055, // CR_SERVER_LOST_EXTENDED
  3024, // MySQL ER_QUERY_TIMEOUT (max_execution_time)
  4031 // ER_CLIENT_INTERACTION_TIMEOUT: disconnected for inactivity
])

/**
 * mysql2's own codes, for errors it raises without a server errno. Its codes for server errors are not used: they
 * come from MySQL's table, and MariaDB reuses numbers (MariaDB's 4025, a failed CHECK such as invalid JSON, arrives
 * as `ER_INNODB_AUTOEXTEND_SIZE_OUT_OF_RANGE`), so server errors are told apart by errno.
 */
const transientMysql2Codes = new Set([
  "PROTOCOL_CONNECTION_LOST",
  "PROTOCOL_SEQUENCE_TIMEOUT",
  "PROTOCOL_ENQUEUE_AFTER_FATAL_ERROR",
  "PROTOCOL_ENQUEUE_AFTER_QUIT",
  "POOL_CLOSED",
  "POOL_ENQUEUELIMIT",
  "ER_CON_COUNT_ERROR"
])

/** SQLite result codes (extended codes such as SQLITE_BUSY_SNAPSHOT start with these) about locks or the disk. */
const transientSqlitePrefixes = ["SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_NOMEM", "SQLITE_PROTOCOL"]

/**
 * For errors without any code. A closed pool or client ("Cannot use a pool after calling end on the pool", "Client
 * was closed", better-sqlite3's "database connection is not open") counts as transient: it happens when the worker
 * shuts down under a running statement, the statement and its data are fine, and another worker (a new pool) can run
 * it; calling it data-class would fail a program for a shutdown. A bare timeout is transient too.
 */
const transientMessage =
  /connection terminated|terminated unexpectedly|timeout exceeded when trying to connect|query read timeout|timed? ?out|timeout|cannot use a pool after calling end|client (was|has been) closed|connection is not open|connection is in closed state|connection (lost|closed|reset|refused|error)|failed to (acquire|connect)|server has gone away|lost connection|socket hang up|econn/i

type Verdict = boolean | undefined

const property = (error: object, key: string): unknown => (error as Record<string, unknown>)[key]

const isSqlState = (code: string) => /^[0-9A-Z]{5}$/.test(code)

const classifySqlState = (code: string): boolean =>
  transientSqlStates.has(code) || transientSqlStateClasses.has(code.slice(0, 2))

/** The verdict of one error's own code, or `undefined` when it carries none we know the meaning of. */
const classifyByCode = (error: object): Verdict => {
  const code = property(error, "code")
  const errno = property(error, "errno")
  const sqlState = property(error, "sqlState")
  if (typeof code === "string" && nodeSocketCodes.has(code)) return true
  // mysql2 server errors: a positive errno (Node's system errnos are negative) beside a `sqlState`.
  if (typeof errno === "number" && errno > 0 && (typeof sqlState === "string" || typeof code === "string")) {
    if (transientMysqlErrnos.has(errno)) return true
    return typeof sqlState === "string" && isSqlState(sqlState) ? classifySqlState(sqlState) : false
  }
  if (typeof code === "string") {
    if (code.startsWith("SQLITE_")) return transientSqlitePrefixes.some((prefix) => code.startsWith(prefix))
    if (transientMysql2Codes.has(code)) return true
    if (isSqlState(code)) return classifySqlState(code)
  }
  return undefined
}

/** The error, its `cause`s and, for an AggregateError (a host with several addresses), its `errors`; no cycles. */
const chain = (error: unknown): Array<object> => {
  const seen = new Set<object>()
  const out: Array<object> = []
  const visit = (value: unknown) => {
    if (typeof value !== "object" || value === null || seen.has(value) || out.length > 20) return
    seen.add(value)
    out.push(value)
    const errors = property(value, "errors")
    if (Array.isArray(errors)) errors.forEach(visit)
    visit(property(value, "cause"))
  }
  visit(error)
  return out
}

/** True when retrying the same statement later may succeed: the connection or the server's state, not the data. */
export const isTransientSqlError = (error: unknown): boolean => {
  const errors = chain(error)
  for (const each of errors) {
    const verdict = classifyByCode(each)
    if (verdict !== undefined) return verdict
  }
  // No code anywhere: only a message that speaks of the connection or a timeout is retried. Anything else may be
  // deterministic, and a deterministic error that is retried loops forever; one wrongly failed is visible.
  return errors.some((each) => {
    const message = property(each, "message")
    return typeof message === "string" && transientMessage.test(message)
  })
}

/**
 * The database's own message, for `error_message`: `integer out of range (SQLSTATE 22003)`, `Duplicate entry '3' for
 * key 'PRIMARY' (errno 1062, SQLSTATE 23000)`, `UNIQUE constraint failed: t.id (SQLITE_CONSTRAINT_PRIMARYKEY)`.
 */
export const describeSqlError = (error: unknown): string => {
  const errors = chain(error)
  const coded = errors.find((each) => classifyByCode(each) !== undefined)
  const source = coded ?? errors.filter((each) => typeof property(each, "message") === "string").at(-1)
  if (source === undefined) return String(error)
  const message = String(property(source, "sqlMessage") ?? property(source, "message"))
  const detail = property(source, "detail")
  const code = property(source, "code")
  const errno = property(source, "errno")
  const sqlState = property(source, "sqlState")
  const withDetail = typeof detail === "string" && detail !== "" ? `${message}: ${detail}` : message
  if (typeof errno === "number" && errno > 0 && typeof sqlState === "string") {
    return `${withDetail} (errno ${errno}, SQLSTATE ${sqlState})`
  }
  if (typeof code !== "string" || message.includes(code)) return withDetail
  return isSqlState(code) && !nodeSocketCodes.has(code) ? `${withDetail} (SQLSTATE ${code})` : `${withDetail} (${code})`
}
