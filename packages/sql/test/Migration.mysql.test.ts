/**
 * The migration on a real MySQL-family server, with SQL that MySQL 8 runs too: indexes looked up in
 * `information_schema` rather than `CREATE INDEX IF NOT EXISTS`. Workers starting together (each its own client, so
 * each migrates) must all succeed and leave each index once.
 */
import { SqlClient } from "@effect/sql"
import { expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { describeWithService } from "../../core/test/utils/services.js"
import { SqlDatabase, SqlProgramRepository } from "../src/index.js"

describeWithService("MYSQL_URL", "the migration on MariaDB", (url) => {
  it.live("workers starting at once all migrate, and each index exists once", () =>
    Effect.gen(function*() {
      const tableName = `migration_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 6)}`
      const worker = SqlProgramRepository.layer({ tableName }).pipe(Layer.provide(SqlDatabase.layer(url)))
      const direct = SqlDatabase.layer(url)
      yield* Effect.addFinalizer(() =>
        Effect.flatMap(SqlClient.SqlClient, (sql) => sql`DROP TABLE IF EXISTS ${sql(tableName)}`).pipe(
          Effect.provide(direct),
          Effect.ignore
        )
      )
      // Four at once on a new table, then one more on the finished table.
      yield* Effect.forEach([1, 2, 3, 4], () => Layer.build(worker).pipe(Effect.scoped), { concurrency: "unbounded" })
      yield* Layer.build(worker).pipe(Effect.scoped)
      const indexes = yield* Effect.flatMap(SqlClient.SqlClient, (sql) =>
        sql<{ readonly name: string; readonly columns: number | string }>`SELECT index_name AS name, COUNT(*) AS columns
          FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = ${tableName}
          GROUP BY index_name`.withoutTransform).pipe(Effect.provide(direct))
      expect(indexes.map((index) => [index.name, Number(index.columns)]).sort()).toEqual([
        ["PRIMARY", 1],
        [`${tableName}_active_id_idx`, 3],
        [`${tableName}_due_idx`, 3],
        [`${tableName}_idempotency_key`, 1],
        [`${tableName}_leased_idx`, 3],
        [`${tableName}_run_id_key`, 1]
      ])
    }).pipe(Effect.scoped), { timeout: 60_000 })
})
