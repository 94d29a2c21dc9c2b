import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { call, startServer, targets } from "./support.js"

const json = { "content-type": "application/json" }

for (const target of targets()) {
  describe(`JSON API on ${target.backend}`, () => {
    it.scopedLive("creates a program and reads it back", () =>
      Effect.gen(function*() {
        const { server } = yield* startServer(target)
        const created = yield* call(server.base, "POST", "/api/programs", {
          body: { jobs: ["fetch", "report"], programData: { shop: 1 }, jobData: { fetch: { page: 0 } } }
        })
        expect(created.status).toBe(201)
        const runId = created.body.runId as string
        const got = yield* call(server.base, "GET", `/api/programs/${runId}`)
        expect(got.status).toBe(200)
        expect(got.body).toMatchObject({
          runId,
          status: "in_progress",
          jobs: ["fetch", "report"],
          currentJob: "fetch",
          step: 0,
          stepRetryCount: 0,
          programData: { shop: 1 },
          jobData: { fetch: { page: 0 } },
          finishedAt: null,
          erroredAt: null
        })
        expect(new Date(got.body.createdAt).getTime()).not.toBeNaN()
      }))

    it.scopedLive("bad input is a 400 and writes nothing", () =>
      Effect.gen(function*() {
        const { server } = yield* startServer(target)
        const bad: ReadonlyArray<{ readonly raw?: string; readonly body?: unknown; readonly tag: string }> = [
          { body: { jobs: [] }, tag: "InvalidRequest" },
          { body: { jobs: ["a"], jobData: { b: {} } }, tag: "InvalidRequest" },
          { body: { jobs: ["-x"] }, tag: "InvalidRequest" },
          { body: { programData: {} }, tag: "HttpApiDecodeError" },
          { body: { jobs: "a" }, tag: "HttpApiDecodeError" },
          { raw: "{not json", tag: "HttpApiDecodeError" }
        ]
        for (const request of bad) {
          const reply = yield* call(server.base, "POST", "/api/programs", {
            ...request,
            headers: json
          })
          expect(reply.status, JSON.stringify(request)).toBe(400)
          expect(reply.body?._tag, `${JSON.stringify(request)} ${reply.text}`).toBe(request.tag)
          expect(typeof reply.body.message).toBe("string")
        }
        const listed = yield* call(server.base, "GET", "/api/programs")
        expect(listed.body.programs).toEqual([])
      }))

    it.scopedLive("an unknown runId is a 404 for get, cancel and resume", () =>
      Effect.gen(function*() {
        const { server } = yield* startServer(target)
        const runId = "00000000-0000-4000-8000-000000000000"
        for (const [method, path] of [["GET", ""], ["POST", "/cancel"], ["POST", "/resume"]] as const) {
          const reply = yield* call(server.base, method, `/api/programs/${runId}${path}`, {
            ...(method === "POST" ? { body: {} } : {})
          })
          expect(reply.status, `${method} ${path}`).toBe(404)
          expect(reply.body).toMatchObject({ _tag: "ProgramNotFound", runId })
        }
      }))

    it.scopedLive("cancels, refuses a second cancel (409), resumes, refuses resuming a running program (409)", () =>
      Effect.gen(function*() {
        const { server } = yield* startServer(target)
        const { runId } = (yield* call(server.base, "POST", "/api/programs", { body: { jobs: ["a", "b"] } })).body
        const cancelled = yield* call(server.base, "POST", `/api/programs/${runId}/cancel`, {
          body: { reason: "not today" }
        })
        expect(cancelled.status).toBe(200)
        expect(cancelled.body).toMatchObject({ runId, status: "errored", errorMessage: "not today" })
        const again = yield* call(server.base, "POST", `/api/programs/${runId}/cancel`, { body: {} })
        expect(again.status).toBe(409)
        expect(again.body).toMatchObject({ _tag: "ProgramConflict", runId })

        const resumed = yield* call(server.base, "POST", `/api/programs/${runId}/resume`, {
          headers: { "x-program-executor": "1" }
        })
        expect(resumed.status).toBe(200)
        expect(resumed.body).toMatchObject({ runId, status: "in_progress", errorMessage: null, step: 0 })
        const running = yield* call(server.base, "POST", `/api/programs/${runId}/resume`, {
          headers: { "x-program-executor": "1" }
        })
        expect(running.status).toBe(409)
        expect(running.body._tag).toBe("ProgramConflict")
      }))

    it.scopedLive("lists with filters and cursor pagination", () =>
      Effect.gen(function*() {
        const { server } = yield* startServer(target)
        const create = (body: unknown) =>
          Effect.map(call(server.base, "POST", "/api/programs", { body }), (reply) => reply.body.runId as string)
        const a = yield* create({ jobs: ["fetch", "report"], programData: { shop: 1 } })
        const b = yield* create({ jobs: ["report"], programData: { shop: 2 } })
        const c = yield* create({ jobs: ["fetch"], programData: { shop: 1 } })
        yield* call(server.base, "POST", `/api/programs/${b}/cancel`, { body: {} })
        yield* server.sql(`UPDATE ${server.table} SET step_retry_count = 3 WHERE run_id = '${c}'`)

        const ids = (path: string) =>
          Effect.map(call(server.base, "GET", path), (reply) => {
            expect(reply.status, path).toBe(200)
            return (reply.body.programs as Array<{ runId: string }>).map((program) => program.runId)
          })
        expect(yield* ids("/api/programs")).toEqual([c, b, a])
        expect(yield* ids("/api/programs?order=asc")).toEqual([a, b, c])
        expect(yield* ids("/api/programs?status=errored")).toEqual([b])
        expect(yield* ids("/api/programs?inProgressOnly=true")).toEqual([c, a])
        expect(yield* ids("/api/programs?retriesGte=2")).toEqual([c])
        expect(yield* ids("/api/programs?job=fetch")).toEqual([c, a])
        expect(yield* ids(`/api/programs?runId=${b.slice(0, 8)}`)).toEqual([b])
        expect(yield* ids(`/api/programs?dataContains=${encodeURIComponent(JSON.stringify({ shop: 1 }))}`)).toEqual([c, a])
        expect(yield* ids(`/api/programs?createdAfter=${encodeURIComponent("2999-01-01T00:00:00Z")}`)).toEqual([])

        const first = yield* call(server.base, "GET", "/api/programs?limit=2")
        expect(first.body.programs.map((program: { runId: string }) => program.runId)).toEqual([c, b])
        expect(first.body.nextAfter).toBe(first.body.programs[1].id)
        const second = yield* call(server.base, "GET", `/api/programs?limit=2&after=${first.body.nextAfter}`)
        expect(second.body.programs.map((program: { runId: string }) => program.runId)).toEqual([a])
        expect(second.body.nextAfter).toBeNull()
      }))

    it.scopedLive("refuses bad list parameters with 400", () =>
      Effect.gen(function*() {
        const { server } = yield* startServer(target)
        for (const query of ["limit=0", "limit=abc", "status=bogus", "retriesGte=-1", "after=x", "dataContains=[1]"]) {
          const reply = yield* call(server.base, "GET", `/api/programs?${query}`)
          expect(reply.status, query).toBe(400)
          expect(reply.body._tag, query).toBe("HttpApiDecodeError")
        }
      }))

    it.scopedLive("cancels and resumes in bulk by filter", () =>
      Effect.gen(function*() {
        const { server } = yield* startServer(target)
        const create = (body: unknown) =>
          Effect.map(call(server.base, "POST", "/api/programs", { body }), (reply) => reply.body.runId as string)
        const a = yield* create({ jobs: ["fetch"], programData: { shop: 1 } })
        const b = yield* create({ jobs: ["fetch"], programData: { shop: 2 } })
        const cancelled = yield* call(server.base, "POST", "/api/programs/cancel", {
          body: { filter: { dataContains: { shop: 1 } }, reason: "bulk" }
        })
        expect(cancelled.status).toBe(200)
        expect(cancelled.body).toEqual({ count: 1 })
        const status = (runId: string) =>
          Effect.map(call(server.base, "GET", `/api/programs/${runId}`), (reply) => reply.body.status)
        expect(yield* status(a)).toBe("errored")
        expect(yield* status(b)).toBe("in_progress")
        const resumed = yield* call(server.base, "POST", "/api/programs/resume", { body: { filter: { job: "fetch" } } })
        expect(resumed.body).toEqual({ count: 1 })
        expect(yield* status(a)).toBe("in_progress")
        const bad = yield* call(server.base, "POST", "/api/programs/cancel", { body: { filter: { dataContains: [1] } } })
        expect(bad.status).toBe(400)
      }))

    it.scopedLive("serves its OpenAPI document and an explorer", () =>
      Effect.gen(function*() {
        const { server } = yield* startServer(target)
        const spec = yield* call(server.base, "GET", "/openapi.json")
        expect(spec.status).toBe(200)
        expect(Object.keys(spec.body.paths)).toEqual(
          expect.arrayContaining([
            "/api/programs",
            "/api/programs/{runId}",
            "/api/programs/{runId}/cancel",
            "/api/programs/{runId}/resume",
            "/api/programs/cancel",
            "/api/programs/resume"
          ])
        )
        const docs = yield* call(server.base, "GET", "/docs")
        expect(docs.status).toBe(200)
        expect(docs.headers.get("content-type")).toContain("text/html")
      }))
  })
}
