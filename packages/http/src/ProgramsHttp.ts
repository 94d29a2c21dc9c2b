/**
 * The operations server: the JSON API (`ProgramsApi`) with its OpenAPI document and explorer, the old library's
 * GraphQL query, Prometheus metrics, health checks, server-sent events and the dashboard, behind one token.
 *
 * Mount it in your own `@effect/platform` server with `layer` (everything) or `handlers` (only the API's group, for an
 * `HttpApi` of your own that adds `ProgramsGroup`); or run it alone with `serve`.
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import * as HttpApiScalar from "@effect/platform/HttpApiScalar"
import type * as HttpApi from "@effect/platform/HttpApi"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServer from "@effect/platform/HttpServer"
import type { ServeError } from "@effect/platform/HttpServerError"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { ProgramExecutor, ProgramQueue, ProgramRepository } from "@program-executor/core"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import { createServer } from "node:http"
import * as Auth from "./internal/auth.js"
import { eventStream } from "./internal/events.js"
import * as GraphQL from "./internal/graphql.js"
import { programsHandlers } from "./internal/handlers.js"
import * as Prometheus from "./internal/prometheus.js"
import { dashboardDir, serveFile } from "./internal/static.js"
import * as Vendor from "./internal/vendor.js"
import { ProgramsApi } from "./ProgramsApi.js"

export interface Options {
  /**
   * Required by every route but `/healthz`: `Authorization: Bearer <token>` for API clients and Prometheus; a browser
   * signs in at `/login` (or opens any page once with `?token=`) and gets a cookie.
   */
  readonly token?: Redacted.Redacted<string> | undefined
  /** Refuse every route that changes something (create, cancel, resume) with 403. */
  readonly readOnly?: boolean | undefined
  /** Where the dashboard's files are. Default: `packages/http/dashboard`. */
  readonly dashboardDir?: string | undefined
}

/** The `programs` group's handlers, for an `HttpApi` of your own that adds `ProgramsGroup`. */
export const handlers = programsHandlers

/** Wait for a check this long before calling the database or the broker unreachable. */
const readyTimeout = Duration.seconds(5)

const GraphQLBody = Schema.Struct({
  query: Schema.String,
  variables: Schema.optionalWith(Schema.NullOr(Schema.Record({ key: Schema.String, value: Schema.Unknown })), {
    exact: true
  }),
  operationName: Schema.optionalWith(Schema.NullOr(Schema.String), { exact: true })
})

const json = (body: unknown, status = 200) => HttpServerResponse.unsafeJson(body, { status })

/** The routes beside the `HttpApi`: GraphQL, metrics, health, events, the dashboard. */
const extraRoutes = (options: Options) =>
  HttpApiBuilder.Router.use((router) =>
    Effect.gen(function*() {
      const executor = yield* ProgramExecutor
      const repository = yield* ProgramRepository
      const queue = yield* ProgramQueue
      const runtime = yield* Effect.runtime<never>()
      const schema = GraphQL.makeSchema(executor, runtime)
      const root = options.dashboardDir ?? dashboardDir

      const graphqlAnswer = (body: unknown) =>
        Schema.decodeUnknown(GraphQLBody)(body).pipe(
          Effect.matchEffect({
            onFailure: () =>
              Effect.succeed(json({ errors: [{ message: "expected { query, variables?, operationName? }" }] }, 400)),
            onSuccess: (request) =>
              Effect.map(GraphQL.execute(schema, request), (result) => json(result, result.data === undefined ? 400 : 200))
          })
        )

      yield* router.post(
        "/graphql",
        Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => request.json).pipe(
          Effect.flatMap(graphqlAnswer),
          Effect.catchTag("RequestError", () => Effect.succeed(json({ errors: [{ message: "the body is not JSON" }] }, 400)))
        )
      )
      yield* router.get(
        "/graphql",
        Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
          const params = new URL(request.url, "http://localhost").searchParams
          const variables = params.get("variables")
          return Effect.try(() => (variables === null ? null : JSON.parse(variables)) as unknown).pipe(
            Effect.flatMap((parsed) =>
              graphqlAnswer({
                query: params.get("query") ?? undefined,
                variables: parsed,
                operationName: params.get("operationName")
              })
            ),
            Effect.orElseSucceed(() => json({ errors: [{ message: "variables is not JSON" }] }, 400))
          )
        })
      )

      yield* router.get("/healthz", Effect.succeed(json({ status: "ok" })))

      yield* router.get(
        "/readyz",
        Effect.gen(function*() {
          const database = yield* repository.get("00000000-0000-0000-0000-000000000000").pipe(
            Effect.timeoutFail({ duration: readyTimeout, onTimeout: () => ({ message: "no answer within 5 seconds" }) }),
            Effect.match({ onFailure: (error) => `unreachable: ${error.message}`, onSuccess: () => "ok" })
          )
          const broker = queue.ping === undefined ? "ok" : yield* queue.ping.pipe(
            Effect.timeoutFail({ duration: readyTimeout, onTimeout: () => ({ message: "no answer within 5 seconds" }) }),
            Effect.match({ onFailure: (error) => `unreachable: ${error.message}`, onSuccess: () => "ok" })
          )
          const ready = database === "ok" && broker === "ok"
          return json({ status: ready ? "ready" : "unavailable", database, broker }, ready ? 200 : 503)
        })
      )

      yield* router.get(
        "/metrics",
        Effect.gen(function*() {
          const gauges = yield* tableGauges(repository)
          const text = yield* Prometheus.exposition(gauges)
          return HttpServerResponse.text(text, { contentType: "text/plain; version=0.0.4; charset=utf-8" })
        })
      )

      yield* router.get("/api/events", eventStream)

      yield* router.get("/", serveFile(root, "index.html"))
      yield* router.get(Vendor.htmPreactRoute, serveFile(Vendor.htmPreactDir, Vendor.htmPreactFile))
      yield* router.get(
        "/dashboard/*",
        Effect.flatMap(HttpRouter.params, (params) => serveFile(root, decodeURIComponent(params["*"] ?? "")))
      )
    })
  )

/** Gauges read from the table: programs in progress and errored, the age of the oldest due step. */
const tableGauges = (repository: ProgramRepository["Type"]) =>
  repository.stats === undefined ? Effect.succeed([]) : repository.stats.pipe(
    Effect.map((stats): ReadonlyArray<Prometheus.Gauge> => [
      {
        name: "program_executor_programs",
        help: "Programs in the table by status",
        labels: { status: "in_progress" },
        value: stats.inProgress
      },
      {
        name: "program_executor_programs",
        help: "Programs in the table by status",
        labels: { status: "errored" },
        value: stats.errored
      },
      {
        name: "program_executor_oldest_due_step_age_seconds",
        help: "How long the oldest step that is due and not running has waited (0 when none)",
        value: Option.match(stats.oldestDueAge, { onNone: () => 0, onSome: Duration.toSeconds })
      }
    ]),
    Effect.catchAll((error) =>
      Effect.as(Effect.logWarning(`metrics: cannot read the table: ${error.message}`), [])
    )
  )

/**
 * Everything, on `HttpApiBuilder`'s router: serve it with `HttpApiBuilder.serve()` on your own `HttpServer`.
 * `/openapi.json` is the API's document, `/docs` its explorer.
 */
export const layer = (
  options: Options = {}
): Layer.Layer<HttpApi.Api, never, ProgramExecutor | ProgramRepository | ProgramQueue> =>
  Layer.mergeAll(
    extraRoutes(options),
    HttpApiBuilder.middlewareOpenApi({ path: "/openapi.json" }),
    HttpApiScalar.layer({ path: "/docs" }),
    HttpApiBuilder.middleware(Auth.middleware(options))
  ).pipe(Layer.provideMerge(HttpApiBuilder.api(ProgramsApi).pipe(Layer.provide(programsHandlers))))

export interface ServeOptions extends Options {
  /** Default 8080; 0 picks a free port (read it from `HttpServer.HttpServer`'s `address`). */
  readonly port?: number | undefined
  /** Default 127.0.0.1: only this machine. */
  readonly host?: string | undefined
}

export const defaultPort = 8080
export const defaultHost = "127.0.0.1"

const isLoopback = (host: string) =>
  host === "localhost" || host === "::1" || host === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(host)

/**
 * Runs `layer` on a Node HTTP server until the scope closes. Bound to a non-loopback address without a token, it
 * says so: anyone who reaches the port can then cancel programs.
 */
export const serve = (
  options: ServeOptions = {}
): Layer.Layer<HttpServer.HttpServer, ServeError, ProgramExecutor | ProgramRepository | ProgramQueue> => {
  const host = options.host ?? defaultHost
  const warning = !isLoopback(host) && options.token === undefined
    ? Layer.effectDiscard(
      Effect.logWarning(
        `serving on ${host} without a token: anyone who can reach this port can read and change programs ` +
          "(set --token or PE_HTTP_TOKEN, or --read-only)"
      )
    )
    : Layer.empty
  return HttpApiBuilder.serve().pipe(
    Layer.provide(layer(options)),
    HttpServer.withLogAddress,
    Layer.provideMerge(NodeHttpServer.layer(createServer, { port: options.port ?? defaultPort, host })),
    Layer.provideMerge(warning)
  )
}
