import { describe, expect, it } from "@effect/vitest"
import { ProgramExecutor } from "@program-executor/core"
import { Context, Effect } from "effect"
import { call, type Server, startServer, targets } from "./support.js"

const allFields = "id runId jobs jobData programData step finishedAt erroredAt errorMessage stepRetryCount createdAt updatedAt"

/** A timestamp as the old library's GraphQL gave it: milliseconds since the epoch, as a string. */
const millis = (value: unknown): string | null => {
  if (value === null || value === undefined) return null
  const date = value instanceof Date
    ? value
    : new Date(/^\d{4}-\d\d-\d\d \d/.test(String(value)) ? `${String(value).replace(" ", "T")}Z` : String(value))
  return String(date.getTime())
}

const json = (value: unknown) => typeof value === "string" ? JSON.parse(value) : value

/** Four programs: in progress, retried twice, cancelled, finished. */
const seed = (server: Server) =>
  Effect.gen(function*() {
    const create = (body: unknown) =>
      Effect.map(call(server.base, "POST", "/api/programs", { body }), (reply) => reply.body.runId as string)
    const running = yield* create({ jobs: ["a", "b"], programData: { shop: 1 }, jobData: { a: { page: 2 } } })
    const retried = yield* create({ jobs: ["a"] })
    const cancelled = yield* create({ jobs: ["a"] })
    const finished = yield* create({ jobs: ["a"] })
    yield* server.sql(`UPDATE ${server.table} SET step_retry_count = 2 WHERE run_id = '${retried}'`)
    yield* call(server.base, "POST", `/api/programs/${cancelled}/cancel`, { body: { reason: "stop" } })
    yield* server.sql(`UPDATE ${server.table} SET finished_at = created_at WHERE run_id = '${finished}'`)
    return { running, retried, cancelled, finished }
  })

const query = (server: Server, source: string, variables?: Record<string, unknown>) =>
  Effect.map(
    call(server.base, "POST", "/graphql", { body: { query: source, ...(variables ? { variables } : {}) } }),
    (reply) => {
      expect(reply.status, reply.text).toBe(200)
      expect(reply.body.errors).toBeUndefined()
      return reply.body.data.programs as Array<Record<string, unknown>>
    }
  )

for (const target of targets()) {
  describe(`GraphQL on ${target.backend}`, () => {
    it.scopedLive("the old library's query without a filter returns every row, newest first, field for field", () =>
      Effect.gen(function*() {
        const { server } = yield* startServer(target)
        yield* seed(server)
        const programs = yield* query(server, `{ programs { ${allFields} } }`)
        const rows = yield* server.rows(`SELECT * FROM ${server.table} ORDER BY id DESC`)
        expect(programs.length).toBe(4)
        expect(programs).toEqual(rows.map((row) => ({
          id: Number(row.id),
          runId: row.run_id,
          jobs: json(row.jobs),
          jobData: JSON.stringify(json(row.job_data)),
          programData: JSON.stringify(json(row.program_data)),
          step: Number(row.step),
          finishedAt: millis(row.finished_at),
          erroredAt: millis(row.errored_at),
          errorMessage: row.error_message ?? null,
          stepRetryCount: Number(row.step_retry_count),
          createdAt: millis(row.created_at),
          updatedAt: millis(row.updated_at)
        })))
        expect(JSON.parse(programs.at(-1)!.jobData as string)).toEqual({ a: { page: 2 } })
      }))

    it.scopedLive("inProgressOnly, stepRetryCountGte and orderBy ASC", () =>
      Effect.gen(function*() {
        const { server } = yield* startServer(target)
        const { cancelled, finished, retried, running } = yield* seed(server)
        const runIds = (programs: Array<Record<string, unknown>>) => programs.map((program) => program.runId)
        expect(runIds(yield* query(server, "{ programs(filter: { inProgressOnly: true }) { runId } }")))
          .toEqual([retried, running])
        expect(runIds(yield* query(server, "{ programs(filter: { stepRetryCountGte: 1 }) { runId stepRetryCount } }")))
          .toEqual([retried])
        expect(runIds(yield* query(server, "{ programs(orderBy: { id: ASC }) { id runId } }")))
          .toEqual([running, retried, cancelled, finished])
        expect(runIds(yield* query(server, "{ programs(orderBy: { id: DESC }) { runId } }")))
          .toEqual([finished, cancelled, retried, running])
        const withVariables = yield* query(
          server,
          "query Programs($filter: ProgramFilter, $orderBy: OrderByInput) { programs(filter: $filter, orderBy: $orderBy) { runId } }",
          { filter: { inProgressOnly: true, stepRetryCountGte: 0 }, orderBy: { id: "ASC" } }
        )
        expect(runIds(withVariables)).toEqual([running, retried])
        const get = yield* call(server.base, "GET", `/graphql?query=${encodeURIComponent("{ programs { runId } }")}`)
        expect(get.body.data.programs.length).toBe(4)
      }))

    it.scopedLive("a table that does not exist gives an empty list; a bad query gives errors with 400", () =>
      Effect.gen(function*() {
        const { server } = yield* startServer(target)
        yield* seed(server)
        yield* server.sql(`DROP TABLE ${server.table}`)
        expect(yield* query(server, "{ programs { runId } }")).toEqual([])
        const bad = yield* call(server.base, "POST", "/graphql", { body: { query: "{ programs { nope } }" } })
        expect(bad.status).toBe(400)
        expect(bad.body.errors[0].message).toContain("nope")
        const notGraphql = yield* call(server.base, "POST", "/graphql", { body: { q: 1 } })
        expect(notGraphql.status).toBe(400)
      }))
  })
}

describe("GraphQL paging", () => {
  it.scopedLive("returns every program, as the old query did, beyond one page of reads", () =>
    Effect.gen(function*() {
      const { context, server } = yield* startServer(targets()[0]!)
      const executor = Context.get(context, ProgramExecutor)
      yield* executor.createPrograms(Array.from({ length: 1005 }, () => ({ jobs: ["a"] })))
      const programs = yield* query(server, "{ programs { id } }")
      expect(programs.length).toBe(1005)
      expect(new Set(programs.map((program) => program.id)).size).toBe(1005)
    }))
})
