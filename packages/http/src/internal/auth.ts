import type * as HttpApp from "@effect/platform/HttpApp"
import * as HttpServerError from "@effect/platform/HttpServerError"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { createHash, timingSafeEqual } from "node:crypto"

export interface AuthOptions {
  /** Required by every route but `/healthz`: `Authorization: Bearer …`, or the cookie set by `/login` or `?token=`. */
  readonly token?: Redacted.Redacted<string> | undefined
  /** Refuse every mutating route with 403. */
  readonly readOnly?: boolean | undefined
}

export const cookieName = "pe_token"

/** A header that a cross-site HTML form cannot send: with it, a request without a JSON body is allowed to mutate. */
export const customHeader = "x-program-executor"

const digest = (text: string) => createHash("sha256").update(text).digest()

/** Constant time, whatever the lengths. */
const sameToken = (given: string, expected: string) => timingSafeEqual(digest(given), digest(expected))

const problem = (status: number, tag: string, message: string, headers: Record<string, string> = {}) =>
  HttpServerResponse.unsafeJson({ _tag: tag, message }, { status, headers })

const readMethods = new Set(["GET", "HEAD", "OPTIONS"])

/** Mutates nothing although it is a POST: a GraphQL query (the schema has no mutations) and the login form. */
const readOnlyPosts = new Set(["/graphql", "/login"])

const escapeHtml = (text: string) =>
  text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)

const loginPage = (error?: string) =>
  HttpServerResponse.html(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>program-executor: sign in</title>
<style>body{font-family:system-ui,sans-serif;margin:4rem auto;max-width:24rem}input,button{font:inherit;padding:.4rem}
.error{color:#b00}</style></head>
<body><h1>program-executor</h1>
${error === undefined ? "" : `<p class="error">${escapeHtml(error)}</p>`}
<form method="post" action="/login"><label>Token <input type="password" name="token" autofocus required></label>
<button type="submit">Sign in</button></form></body></html>`).pipe(
    HttpServerResponse.setStatus(error === undefined ? 200 : 401)
  )

const withCookie = (response: HttpServerResponse.HttpServerResponse, token: string) =>
  HttpServerResponse.setHeader(
    response,
    "set-cookie",
    `${cookieName}=${encodeURIComponent(token)}; Path=/; HttpOnly; SameSite=Strict`
  )

const cookieToken = (request: HttpServerRequest.HttpServerRequest): string | undefined => {
  const value = request.cookies[cookieName]
  return value === undefined ? undefined : value
}

const bearerToken = (request: HttpServerRequest.HttpServerRequest): string | undefined => {
  const header = request.headers["authorization"]
  return header !== undefined && header.toLowerCase().startsWith("bearer ") ? header.slice(7).trim() : undefined
}

const wantsHtml = (request: HttpServerRequest.HttpServerRequest) =>
  request.method === "GET" && (request.headers["accept"] ?? "").includes("text/html")

const isJson = (request: HttpServerRequest.HttpServerRequest) =>
  (request.headers["content-type"] ?? "").toLowerCase().split(";")[0]!.trim() === "application/json"

/**
 * Who may do what, in front of every route: the token (when one is set), `--read-only`, and the rule that a mutating
 * request carries a JSON body or the `x-program-executor` header, which no cross-site form can send.
 */
export const middleware = (options: AuthOptions) => (app: HttpApp.Default): HttpApp.Default =>
  Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const url = new URL(request.url, "http://localhost")
    const path = url.pathname
    if (path === "/healthz") return yield* app
    const token = options.token === undefined ? undefined : Redacted.value(options.token)

    if (path === "/login") {
      if (token === undefined) return HttpServerResponse.redirect("/", { status: 303 })
      if (request.method !== "POST") return loginPage()
      const form = yield* Effect.option(request.urlParamsBody)
      const given = form._tag === "Some" ? form.value.find(([key]) => key === "token")?.[1] : undefined
      return given !== undefined && sameToken(given, token)
        ? withCookie(HttpServerResponse.redirect("/", { status: 303 }), token)
        : loginPage("wrong token")
    }

    if (token !== undefined) {
      const fromQuery = url.searchParams.get("token")
      if (fromQuery !== null && request.method === "GET" && sameToken(fromQuery, token)) {
        // Once: the token becomes a cookie and leaves the address bar (and the browser's history).
        url.searchParams.delete("token")
        return withCookie(HttpServerResponse.redirect(`${url.pathname}${url.search}`, { status: 303 }), token)
      }
      const given = bearerToken(request) ?? cookieToken(request)
      if (given === undefined || !sameToken(given, token)) {
        return wantsHtml(request)
          ? HttpServerResponse.redirect("/login", { status: 303 })
          : problem(401, "Unauthorized", "a token is required: Authorization: Bearer <token>", {
            "www-authenticate": "Bearer"
          })
      }
    }

    if (!readMethods.has(request.method)) {
      if (options.readOnly === true && !readOnlyPosts.has(path)) {
        return problem(403, "Forbidden", "this server is read-only (--read-only)")
      }
      if (!isJson(request) && request.headers[customHeader] === undefined) {
        return problem(
          403,
          "Forbidden",
          `a request that changes something needs a JSON body (content-type: application/json) or the ${customHeader} header`
        )
      }
    }
    return yield* app.pipe(
      // A body that is not JSON fails before the API's decoder sees it; it answers like any other bad input.
      // (The API's decoder turns that read failure into a defect.)
      Effect.catchSomeDefect((defect) =>
        HttpServerError.isServerError(defect) && defect._tag === "RequestError"
          ? Option.some(
            Effect.succeed(problem(400, "HttpApiDecodeError", `the request could not be read: ${defect.message}`))
          )
          : Option.none()
      )
    )
  })
