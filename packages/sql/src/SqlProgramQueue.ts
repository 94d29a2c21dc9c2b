/**
 * A `ProgramQueue` whose queue is the programs table itself: a due, unleased, unfinished, unerrored row is a pending
 * message. `take` claims rows as it dequeues them (the delivery carries the claimed row), `publish` writes nothing and
 * only wakes idle consumers: in this process at once, in others through PostgreSQL's LISTEN/NOTIFY, and everywhere
 * through a poll, which also makes the executor's sweeper redundant.
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import Pg from "pg"
import * as SqlClient from "@effect/sql/SqlClient"
import { type Lease, type ProgramRecord, ProgramQueue, type RepositoryError } from "@program-executor/core"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FiberSet from "effect/FiberSet"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as PubSub from "effect/PubSub"
import * as Queue from "effect/Queue"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import { InvalidTableNameError, toRepositoryError } from "./internal/programsTable.js"
import { makeTable } from "./SqlProgramRepository.js"

export { InvalidTableNameError }

export interface Options {
  /** Default `programs`; the same table as the repository's. */
  readonly tableName?: string
  /** How often an idle consumer looks for due rows when nothing woke it. Default 1 second. */
  readonly pollInterval?: Duration.DurationInput
}

/** A failed claim is retried with this, forever: `take` never fails. */
const claimRetry = Schedule.exponential("100 millis", 2).pipe(
  Schedule.modifyDelay((delay) => Duration.min(delay, Duration.seconds(5)))
)

const notifySpacing = Duration.millis(20)

/** Notifications on `channel` through a dedicated connection; fails when the connection errors or ends. */
const listen = (config: PgClient.PgClientConfig, channel: string): Stream.Stream<void, Error> =>
  Stream.asyncScoped<void, Error>((emit) =>
    Effect.gen(function*() {
      const client = yield* Effect.acquireRelease(
        Effect.tryPromise({
          try: async () => {
            const client = new Pg.Client({
              ...(config.url === undefined ? {} : { connectionString: Redacted.value(config.url) }),
              ...(config.host === undefined ? {} : { host: config.host }),
              ...(config.port === undefined ? {} : { port: config.port }),
              ...(config.database === undefined ? {} : { database: config.database }),
              ...(config.username === undefined ? {} : { user: config.username }),
              ...(config.password === undefined ? {} : { password: Redacted.value(config.password) }),
              ...(config.ssl === undefined ? {} : { ssl: config.ssl })
            })
            // Until the listeners below are attached, a connection error must not crash the process.
            client.on("error", () => {})
            await client.connect()
            return client
          },
          catch: (cause) => cause instanceof Error ? cause : new Error(String(cause))
        }),
        (client) => Effect.promise(() => client.end().catch(() => undefined)).pipe(Effect.timeoutOption("1 second"))
      )
      client.on("notification", (message) => {
        if (message.channel === channel) emit.single(undefined)
      })
      client.on("error", (error) => emit.fail(error))
      client.on("end", () => emit.end())
      yield* Effect.tryPromise({
        try: () => client.query(`LISTEN ${Pg.escapeIdentifier(channel)}`),
        catch: (cause) => cause instanceof Error ? cause : new Error(String(cause))
      })
    })
  )

/** A row claimed ahead of its delivery, and when (local clock: only its age matters). */
interface Buffered {
  readonly row: ProgramRecord
  readonly claimedAt: number
}

const keyOf = (lease: { readonly runId: string; readonly step: number }) => `${lease.runId}\u0000${lease.step}`

export const make = (
  options: Options = {}
): Effect.Effect<ProgramQueue["Type"], InvalidTableNameError | RepositoryError, SqlClient.SqlClient | Scope.Scope> =>
  Effect.gen(function*() {
    const table = yield* makeTable(options)
    const sql = yield* SqlClient.SqlClient
    const pollInterval = Duration.decode(options.pollInterval ?? "1 second")
    // Consumers of this process waiting for work. While one is, it takes what is published here: nobody else
    // needs waking.
    let idleConsumers = 0
    // Wake-ups that reached this process, counted: a consumer whose claim found nothing looks again at once when one
    // arrived meanwhile (its claim may have run before that row was written), and sleeps only otherwise. Only idle
    // consumers are signalled (sliding, with room for one: a signal sent before the consumer waits is kept), so a busy
    // worker's publish costs a counter increment.
    let published = 0
    const wakeups = yield* PubSub.sliding<void>(1)
    const wakeLocal = Effect.suspend(() => {
      published++
      return idleConsumers > 0 ? PubSub.publish(wakeups, undefined) : Effect.void
    })
    const delayed = yield* FiberSet.make()

    // Other processes: LISTEN/NOTIFY where the database has it. A NOTIFY serializes commits on the server, so it is
    // sent only when no consumer here is idle, at most one at a time and one per `notifySpacing`: a burst of
    // publishes costs one NOTIFY, not one per step. The poll covers whatever this misses.
    const pg = yield* Effect.serviceOption(PgClient.PgClient)
    const channel = `program_executor_${table.tableName}`.slice(0, 63)
    let notifyPending = false
    const notifySignal = yield* Queue.sliding<void>(1)
    if (Option.isSome(pg)) {
      const client = pg.value
      // Our own LISTEN connection, not the client's shared one: when the server restarts, that one ends silently,
      // while this stream fails and is opened again.
      yield* listen(client.config, channel).pipe(
        Stream.runForEach(() => wakeLocal),
        Effect.zipRight(Effect.fail(new Error("the LISTEN connection ended"))),
        Effect.tapError((error) => Effect.logWarning(`LISTEN ${channel} failed, reconnecting: ${error.message}`)),
        Effect.retry(claimRetry),
        Effect.forkScoped
      )
      yield* Queue.take(notifySignal).pipe(
        Effect.zipRight(Effect.suspend(() => {
          notifyPending = false
          // pg_notify, not NOTIFY: NOTIFY takes no bind parameters.
          return sql`SELECT pg_notify(${channel}, 'wake')`.withoutTransform
        })),
        Effect.catchAll((error) => Effect.logDebug(`NOTIFY failed; other workers will poll: ${error.message}`)),
        Effect.zipRight(Effect.sleep(notifySpacing)),
        Effect.forever,
        Effect.forkScoped
      )
    }
    const wakeOthers = Option.isSome(pg)
      ? Effect.suspend(() => {
        if (notifyPending || idleConsumers > 0) return Effect.void
        notifyPending = true
        return Queue.offer(notifySignal, undefined)
      })
      : Effect.void
    const wake = Effect.zipRight(wakeLocal, wakeOthers)

    const service: ProgramQueue["Type"] = {
      // The row is the message, and a delay is already in `next_run_at`: only wake consumers, when it is due.
      publish: (_message, publishOptions) =>
        publishOptions?.delay === undefined || Duration.toMillis(Duration.decode(publishOptions.delay)) <= 0
          ? wake
          : FiberSet.run(delayed, Effect.interruptible(Effect.delay(wake, publishOptions.delay))).pipe(Effect.asVoid),

      subscribe: (subscribeOptions) =>
        Effect.gen(function*() {
          const { owner, leaseFor } = subscribeOptions.claim
          const prefetch = Math.max(1, subscribeOptions.prefetch)
          const signals = yield* PubSub.subscribe(wakeups)
          const settled = yield* Queue.sliding<void>(1)
          const mutex = yield* Effect.makeSemaphore(1)
          // Claimed but not yet taken, and taken but not yet acknowledged. Both hold leases.
          const buffer: Array<Buffered> = []
          const outstanding = new Map<string, Lease>()
          let stopped = false
          // The wake-up count when a claim last found fewer due rows than it asked for.
          let tableDrainedAt: number | undefined
          const maxBufferedMillis = Math.min(2_000, Duration.toMillis(leaseFor) / 3)

          const leaseOf = (row: ProgramRecord): Lease => ({ runId: row.runId, step: row.step, token: row.leaseToken ?? "" })
          const giveBack = (leases: ReadonlyArray<Lease>) =>
            table.releaseAll(leases).pipe(
              Effect.mapError(toRepositoryError("giving back claimed steps")),
              Effect.tap((released) => released ? wake : Effect.void),
              Effect.catchAll((error) => Effect.logWarning(`${error.message}; their leases will expire`)),
              Effect.asVoid
            )
          const drainBuffer = Effect.suspend(() => giveBack(buffer.splice(0).map((entry) => leaseOf(entry.row))))

          yield* Effect.addFinalizer(() =>
            Effect.suspend(() => {
              stopped = true
              const leases = [...buffer.splice(0).map((entry) => leaseOf(entry.row)), ...outstanding.values()]
              outstanding.clear()
              return giveBack(leases)
            })
          )

          // Rows claimed ahead wait while every slot is busy (slow jobs): give them back to other workers.
          yield* Effect.suspend(() =>
            buffer.length > 0 && Date.now() - buffer[0]!.claimedAt > maxBufferedMillis ? drainBuffer : Effect.void
          ).pipe(Effect.repeat(Schedule.spaced(Duration.millis(maxBufferedMillis))), Effect.forkScoped)

          const settle = (lease: Lease, release: boolean) =>
            Effect.suspend(() => {
              if (!outstanding.delete(keyOf(lease))) return Effect.void
              return Effect.zipRight(release ? giveBack([lease]) : Effect.void, Queue.offer(settled, undefined))
            })

          const deliver = (row: ProgramRecord) => {
            const lease = leaseOf(row)
            outstanding.set(keyOf(lease), lease)
            return {
              message: { runId: row.runId, step: row.step },
              claimed: Option.some(row),
              ack: settle(lease, false),
              nack: settle(lease, true)
            }
          }

          // One attempt is uninterruptible, so claimed rows always reach the buffer; the waits between are not.
          const claimSome = (limit: number) =>
            Effect.uninterruptible(
              table.claimNext(owner, leaseFor, limit).pipe(
                Effect.tap((rows) =>
                  Effect.sync(() => {
                    const claimedAt = Date.now()
                    for (const row of rows) buffer.push({ row, claimedAt })
                  })
                )
              )
            ).pipe(
              Effect.mapError(toRepositoryError("claiming due steps")),
              Effect.tapError((error) => Effect.logWarning(`${error.message}; retrying`)),
              Effect.retry(claimRetry),
              Effect.orDie
            )

          /** Waits for a wake-up or the poll, unless one arrived since `seen`. */
          const waitForWork = (seen: number) =>
            Effect.acquireUseRelease(
              Effect.sync(() => idleConsumers++),
              () => published !== seen ? Effect.void : Effect.raceFirst(Queue.take(signals), Effect.sleep(pollInterval)),
              () => Effect.sync(() => idleConsumers--)
            )

          const next: Effect.Effect<ReturnType<typeof deliver>> = Effect.suspend(() => {
            if (stopped) return Effect.never
            const free = prefetch - outstanding.size
            if (free <= 0) return Effect.zipRight(Queue.take(settled), next)
            const entry = buffer.shift()
            if (entry !== undefined) {
              // Held too long while slow steps ran: give it back (with the rest) rather than run it on an old lease.
              if (Date.now() - entry.claimedAt <= maxBufferedMillis) return Effect.succeed(deliver(entry.row))
              buffer.unshift(entry)
              return Effect.zipRight(drainBuffer, next)
            }
            const seen = published
            if (tableDrainedAt === seen) {
              // The last claim took every due row there was and nothing was published since: asking again would
              // find nothing (it cost a wasted round trip per step at low load). Wait for a wake-up or the poll.
              tableDrainedAt = undefined
              return Effect.zipRight(waitForWork(seen), next)
            }
            // Claims a batch: what may be delivered now, plus as many again to deliver next without a round trip.
            const limit = free + prefetch - 1
            return Effect.flatMap(claimSome(limit), (rows) => {
              if (rows.length < limit) tableDrainedAt = seen
              return rows.length > 0 || published !== seen ? next : Effect.zipRight(waitForWork(seen), next)
            })
          })

          return {
            take: mutex.withPermits(1)(next),
            stop: Effect.suspend(() => {
              stopped = true
              return drainBuffer
            })
          }
        })
    }
    return service
  })

export const layer = (
  options: Options = {}
): Layer.Layer<ProgramQueue, InvalidTableNameError | RepositoryError, SqlClient.SqlClient> =>
  Layer.scoped(ProgramQueue, make(options))
