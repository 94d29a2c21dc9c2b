import { describe, expect, it } from "@effect/vitest"
import { Effect, Logger, Redacted } from "effect"
import { mkdtempSync, writeFileSync, mkdirSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { call, startServer, targets } from "./support.js"

const sqlite = targets()[0]!
const token = "s3cret-token"
const bearer = { authorization: `Bearer ${token}` }

describe("token", () => {
  it.scopedLive("every route but /healthz needs the token; a wrong one is refused", () =>
    Effect.gen(function*() {
      const { server } = yield* startServer(sqlite, { token: Redacted.make(token) })
      for (const path of ["/api/programs", "/openapi.json", "/metrics", "/readyz", "/graphql?query={programs{id}}", "/api/events"]) {
        const refused = yield* call(server.base, "GET", path)
        expect(refused.status, path).toBe(401)
        expect(refused.body._tag).toBe("Unauthorized")
        expect(refused.headers.get("www-authenticate")).toBe("Bearer")
        const wrong = yield* call(server.base, "GET", path, { headers: { authorization: "Bearer nope" } })
        expect(wrong.status, path).toBe(401)
      }
      const created = yield* call(server.base, "POST", "/api/programs", { body: { jobs: ["a"] } })
      expect(created.status).toBe(401)
      expect((yield* call(server.base, "GET", "/healthz")).status).toBe(200)

      const allowed = yield* call(server.base, "GET", "/api/programs", { headers: bearer })
      expect(allowed.status).toBe(200)
      // The refused create wrote nothing.
      expect(allowed.body.programs).toEqual([])
      const metrics = yield* call(server.base, "GET", "/metrics", { headers: bearer })
      expect(metrics.status).toBe(200)
      const create = yield* call(server.base, "POST", "/api/programs", { body: { jobs: ["a"] }, headers: bearer })
      expect(create.status).toBe(201)
    }))

  it.scopedLive("a browser signs in with the form or ?token= once and then holds a cookie", () =>
    Effect.gen(function*() {
      const { server } = yield* startServer(sqlite, { token: Redacted.make(token) })
      const html = { accept: "text/html" }
      const toLogin = yield* call(server.base, "GET", "/", { headers: html })
      expect(toLogin.status).toBe(303)
      expect(toLogin.headers.get("location")).toBe("/login")
      const form = yield* call(server.base, "GET", "/login")
      expect(form.status).toBe(200)
      expect(form.text).toContain("<form")

      const form_ = { "content-type": "application/x-www-form-urlencoded" }
      const wrong = yield* call(server.base, "POST", "/login", { raw: "token=nope", headers: form_ })
      expect(wrong.status).toBe(401)
      expect(wrong.headers.get("set-cookie")).toBeNull()
      const signedIn = yield* call(server.base, "POST", "/login", { raw: `token=${token}`, headers: form_ })
      expect(signedIn.status).toBe(303)
      const cookie = signedIn.headers.get("set-cookie")!.split(";")[0]!
      expect(signedIn.headers.get("set-cookie")).toContain("HttpOnly")
      const page = yield* call(server.base, "GET", "/", { headers: { ...html, cookie } })
      expect(page.status).toBe(200)
      expect(page.text).toContain("program-executor")

      const once = yield* call(server.base, "GET", `/api/programs?limit=5&token=${token}`)
      expect(once.status).toBe(303)
      expect(once.headers.get("location")).toBe("/api/programs?limit=5")
      expect(once.headers.get("set-cookie")).toContain(`pe_token=${token}`)
      const withCookie = yield* call(server.base, "GET", "/api/programs?limit=5", { headers: { cookie } })
      expect(withCookie.status).toBe(200)
    }))
})

describe("read-only", () => {
  it.scopedLive("refuses every mutating route with 403 and writes nothing; reads and GraphQL queries work", () =>
    Effect.gen(function*() {
      const { server } = yield* startServer(sqlite, { readOnly: true })
      const runId = "00000000-0000-4000-8000-000000000000"
      for (const path of ["/api/programs", `/api/programs/${runId}/cancel`, `/api/programs/${runId}/resume`,
        "/api/programs/cancel", "/api/programs/resume"]) {
        const reply = yield* call(server.base, "POST", path, { body: { jobs: ["a"], filter: {} } })
        expect(reply.status, path).toBe(403)
        expect(reply.body._tag).toBe("Forbidden")
      }
      const listed = yield* call(server.base, "GET", "/api/programs")
      expect(listed.status).toBe(200)
      expect(listed.body.programs).toEqual([])
      const query = yield* call(server.base, "POST", "/graphql", { body: { query: "{ programs { runId } }" } })
      expect(query.status).toBe(200)
      expect(query.body).toEqual({ data: { programs: [] } })
    }))
})

describe("cross-site requests", () => {
  it.scopedLive("a mutating request needs a JSON body or the x-program-executor header", () =>
    Effect.gen(function*() {
      const { server } = yield* startServer(sqlite)
      // What an HTML form on another site can send.
      const asForm = yield* call(server.base, "POST", "/api/programs", {
        raw: JSON.stringify({ jobs: ["a"] }),
        headers: { "content-type": "text/plain" }
      })
      expect(asForm.status).toBe(403)
      const runId = "00000000-0000-4000-8000-000000000000"
      const bare = yield* call(server.base, "POST", `/api/programs/${runId}/resume`)
      expect(bare.status).toBe(403)
      const withHeader = yield* call(server.base, "POST", `/api/programs/${runId}/resume`, {
        headers: { "x-program-executor": "1" }
      })
      expect(withHeader.status).toBe(404)
      expect((yield* call(server.base, "GET", "/api/programs")).body.programs).toEqual([])
      const asJson = yield* call(server.base, "POST", "/api/programs", { body: { jobs: ["a"] } })
      expect(asJson.status).toBe(201)
    }))
})

describe("exposure", () => {
  it.scopedLive("warns when bound to a non-loopback address without a token, not with one", () =>
    Effect.gen(function*() {
      const messages: Array<string> = []
      const capture = Logger.replace(
        Logger.defaultLogger,
        Logger.make(({ message }) => messages.push(String(message)))
      )
      yield* startServer(sqlite, { host: "0.0.0.0" }).pipe(Effect.provide(capture))
      expect(messages.some((message) => message.includes("without a token"))).toBe(true)
      messages.length = 0
      yield* startServer(sqlite, { host: "0.0.0.0", token: Redacted.make(token) }).pipe(Effect.provide(capture))
      yield* startServer(sqlite, {}).pipe(Effect.provide(capture))
      expect(messages.some((message) => message.includes("without a token"))).toBe(false)
    }))
})

describe("dashboard files", () => {
  it.scopedLive("serves / and /dashboard/* from the dashboard directory, nothing outside it", () =>
    Effect.gen(function*() {
      const root = mkdtempSync(join(tmpdir(), "pe-dashboard-"))
      mkdirSync(join(root, "site"))
      writeFileSync(join(root, "site", "index.html"), "<h1>hello</h1>")
      writeFileSync(join(root, "site", "app.js"), "export const x = 1")
      writeFileSync(join(root, "secret.txt"), "secret")
      const { server } = yield* startServer(sqlite, { dashboardDir: join(root, "site") })
      const index = yield* call(server.base, "GET", "/")
      expect(index.status).toBe(200)
      expect(index.text).toBe("<h1>hello</h1>")
      expect(index.headers.get("content-type")).toContain("text/html")
      const script = yield* call(server.base, "GET", "/dashboard/app.js")
      expect(script.status).toBe(200)
      expect(script.headers.get("content-type")).toContain("text/javascript")
      for (const path of ["/dashboard/..%2fsecret.txt", "/dashboard/%2e%2e/secret.txt", "/dashboard/missing.js"]) {
        const reply = yield* call(server.base, "GET", path)
        expect(reply.status, path).toBe(404)
        expect(reply.text).not.toContain("secret")
      }
    }))

  it.scopedLive("the package's own dashboard page is served at /", () =>
    Effect.gen(function*() {
      const { server } = yield* startServer(sqlite)
      const index = yield* call(server.base, "GET", "/")
      expect(index.status).toBe(200)
      expect(index.text).toContain("<html")
    }))
})
