/**
 * The cutting proxy does what ambiguous-write tests rely on: the statement it cuts after committed, the client saw
 * only a dropped connection, and the next connection through the proxy works.
 */
import { describe, expect, it } from "@effect/vitest"
import Pg from "pg"
import { describeWithService } from "../../core/test/utils/services.js"
import { describeSqlError, isTransientSqlError } from "../src/internal/sqlErrors.js"
import { makeCuttingProxy } from "./support/cuttingProxy.js"

let counter = 0
const uniqueTable = () =>
  `cutproxy_${Date.now().toString(36)}_${(counter++).toString(36)}_${Math.random().toString(36).slice(2, 6)}`

/** A table with one row (id 1, n 0), the proxy, a pool through it and one beside it; all removed afterwards. */
const withSetup = async (
  url: string,
  body: (setup: { table: string; direct: Pg.Pool; proxied: Pg.Pool; proxy: Awaited<ReturnType<typeof makeCuttingProxy>> }) => Promise<void>
) => {
  const table = uniqueTable()
  const direct = new Pg.Pool({ connectionString: url, max: 2 })
  const proxy = await makeCuttingProxy(url)
  const proxied = new Pg.Pool({ connectionString: proxy.url, max: 1 })
  proxied.on("error", () => {})
  await direct.query(`CREATE TABLE ${table} (id INT PRIMARY KEY, n INT NOT NULL)`)
  try {
    await direct.query(`INSERT INTO ${table} (id, n) VALUES (1, 0)`)
    await body({ table, direct, proxied, proxy })
  } finally {
    await proxied.end().catch(() => undefined)
    await proxy.close()
    await direct.query(`DROP TABLE IF EXISTS ${table}`)
    await direct.end()
  }
}

const readN = async (pool: Pg.Pool, table: string) =>
  (await pool.query<{ n: number }>(`SELECT n FROM ${table} WHERE id = 1`)).rows[0]?.n

describeWithService("DATABASE_URL", "CuttingProxy", (url) => {
  describe("in front of PostgreSQL", () => {
    it("an UPDATE cut after it was sent commits, and the client sees a transient connection error", () =>
      withSetup(url, async ({ direct, proxied, proxy, table }) => {
        expect(await readN(proxied, table)).toBe(0)
        const update = `UPDATE ${table} SET n = n + 1 WHERE id = 1`
        const cut = proxy.cutAfter((chunk) => chunk.includes(update))
        const error = await proxied.query(update).then(() => undefined, (error: unknown) => error)
        await cut
        expect(proxy.cuts).toBe(1)
        expect(error).toBeInstanceOf(Error)
        expect(describeSqlError(error)).toMatch(/^Connection terminated/)
        expect(isTransientSqlError(error)).toBe(true)
        expect(await readN(direct, table)).toBe(1)
        // The pool dropped the cut connection: the next query goes through the proxy on a new one.
        expect(await readN(proxied, table)).toBe(1)
      }))

    it("a named prepared statement is cut on its second run, matched by its name in the Bind message", () =>
      withSetup(url, async ({ direct, proxied, proxy, table }) => {
        const statement = { name: `${table}_advance`, text: `UPDATE ${table} SET n = n + 1 WHERE id = $1`, values: [1] }
        const client = await proxied.connect()
        client.on("error", () => {})
        try {
          await client.query(statement)
          const cut = proxy.cutAfter((chunk) => chunk.includes(statement.name) && !chunk.includes(statement.text))
          const error = await client.query(statement).then(() => undefined, (error: unknown) => error)
          await cut
          expect(isTransientSqlError(error)).toBe(true)
        } finally {
          client.release(true)
        }
        expect(await readN(direct, table)).toBe(2)
        expect(await readN(proxied, table)).toBe(2)
        expect(proxy.cuts).toBe(1)
      }))
  })
})
