/**
 * "After the commit" for the application's transactions. @effect/sql 0.52 has no such hook: `withTransaction` keeps
 * its connection in the fiber's context (`TransactionConnection`) and commits as its effect succeeds, but tells no
 * one. So the clients `SqlDatabase` builds get a `withTransaction` that carries a list of effects for the
 * transaction's lifetime and runs them once it has committed. `createProgram` puts its wake-up there: sent before the
 * commit, it would reach a worker whose claim cannot see the row yet (MariaDB, RabbitMQ: refused, the program then
 * waited for the sweeper's `staleAfter`); sent after it, the program runs at once.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"

/** The effects to run when the innermost `withTransaction` (or savepoint) of this fiber completes. */
export class AfterCommit extends Context.Tag("@program-executor/sql/AfterCommit")<AfterCommit, Array<Effect.Effect<void>>>() {}

/** An open transaction on this fiber, of any client (where @effect/sql's statements would run). */
export const inTransaction: Effect.Effect<boolean> = Effect.map(
  Effect.serviceOption(SqlClient.TransactionConnection),
  Option.isSome
)

/**
 * Makes `client.withTransaction` run the effects registered in it after its commit. A savepoint (a nested
 * `withTransaction`) that succeeds hands its effects to the enclosing transaction; one that rolls back drops them,
 * as does a rollback of the whole. A commit that fails is a defect in @effect/sql, so the effects never run then.
 * Mutates the client, which its builder owns: `withoutTransforms()` copies of it keep the hook.
 */
export const install = <C extends SqlClient.SqlClient>(client: C): C => {
  const withTransaction = client.withTransaction
  const hooked: SqlClient.SqlClient["withTransaction"] = (effect) =>
    Effect.flatMap(Effect.serviceOption(AfterCommit), (enclosing) => {
      const effects: Array<Effect.Effect<void>> = []
      return Effect.uninterruptibleMask((restore) =>
        withTransaction(restore(Effect.provideService(effect, AfterCommit, effects))).pipe(
          Effect.tap(() =>
            Option.isSome(enclosing)
              ? Effect.sync(() => enclosing.value.push(...effects))
              : Effect.forEach(effects, (after) => after, { discard: true })
          )
        )
      )
    })
  ;(client as { withTransaction: SqlClient.SqlClient["withTransaction"] }).withTransaction = hooked
  return client
}

/**
 * Registers `effect` to run after the commit of this fiber's transaction; false when there is none (run it now).
 * A transaction of a client built elsewhere cannot be observed: the effect runs now, and a worker's claim that it
 * wakes before the commit is refused (the SQL queue's poll, or the sweeper, finds the program later).
 */
export const register = (effect: Effect.Effect<void>): Effect.Effect<boolean> =>
  Effect.flatMap(Effect.serviceOption(AfterCommit), (effects) =>
    Effect.map(inTransaction, (open) => {
      if (!open || Option.isNone(effects)) return false
      effects.value.push(effect)
      return true
    }))
