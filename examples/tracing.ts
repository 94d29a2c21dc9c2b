/**
 * A worker traced with OpenTelemetry, exporting over OTLP/HTTP (a collector, Jaeger, Tempo…; the endpoint is
 * OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, default http://localhost:4318/v1/traces). Each step runs in a
 * `program-executor.step` span (runId, step, job, attempt), the parent of the job's own spans and linked to the
 * previous step's span. Without a collector it runs all the same: failed exports are only logged.
 * Run: node --import tsx examples/tracing.ts
 */
import { NodeSdk } from "@effect/opentelemetry"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { DiagConsoleLogger, DiagLogLevel, diag } from "@opentelemetry/api"
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http"
import { BatchSpanProcessor, type SpanExporter } from "@opentelemetry/sdk-trace-base"
import { Executor, Job, JobContext, JobLibrary, ProgramExecutor } from "@program-executor/core"
import { SqlProgramExecutor } from "@program-executor/sql"
import { Effect, Layer } from "effect"

// OpenTelemetry's own warnings and errors (a misconfigured exporter, say), on the console.
diag.setLogger(new DiagConsoleLogger(), DiagLogLevel.WARN)

const fetchOrders = Job.make("fetch_orders", Effect.gen(function*() {
  const ctx = yield* JobContext
  // The job's own spans are children of its step's span.
  yield* Effect.sleep("20 millis").pipe(
    Effect.withSpan("shop-api.orders", { attributes: { shop: ctx.programData.shop } })
  )
  yield* ctx.jobData.merge({ fetched: 42 })
}))

const sendReport = Job.make("send_report", Effect.log("report sent").pipe(Effect.withSpan("mailer.send")))

/** The OTLP exporter, saying when an export failed (OpenTelemetry itself tells only its debug log). */
const loggedExporter = (exporter: SpanExporter): SpanExporter => ({
  export: (spans, done) =>
    exporter.export(spans, (result) => {
      if (result.error !== undefined) console.warn(`trace export failed: ${result.error.message}`)
      done(result)
    }),
  shutdown: () => exporter.shutdown(),
  forceFlush: () => exporter.forceFlush?.() ?? Promise.resolve()
})

const Tracing = NodeSdk.layer(() => ({
  resource: { serviceName: "program-executor-worker" },
  // A short export timeout: at shutdown, an unreachable collector holds the process this long at most.
  spanProcessor: new BatchSpanProcessor(loggedExporter(new OTLPTraceExporter({ timeoutMillis: 2000 }))),
  shutdownTimeout: "3 seconds"
}))

const main = Effect.gen(function*() {
  const runId = yield* ProgramExecutor.createProgram({
    jobs: ["fetch_orders", "send_report"],
    programData: { shop: 1 }
  })
  yield* Effect.forkScoped(Executor.run) // usually a process of its own, with the same tracing layer
  while (true) {
    const program = yield* ProgramExecutor.get(runId).pipe(Effect.flatMap(Effect.orDie))
    if (program.finishedAt !== null || program.erroredAt !== null) return yield* Effect.log("done", runId)
    yield* Effect.sleep("100 millis")
  }
}).pipe(Effect.scoped)

const filename = process.env.TRACING_EXAMPLE_DB ?? "./tracing-example.db"
const storage = SqlProgramExecutor.layerEmbedded({ filename })
main.pipe(
  Effect.provide(JobLibrary.layer(fetchOrders, sendReport).pipe(Layer.provideMerge(storage), Layer.merge(Tracing))),
  NodeRuntime.runMain
)
