/**
 * `pnpm demo`: a handful of programs on the embedded default (SQLite file, SQL queue, one process), with live
 * progress and a summary. Ctrl-C stops it; running it again resumes the unfinished programs instead of creating
 * new ones.
 *
 *   node --import tsx examples/demo.ts [--quick] [--db PATH]      (env: PE_DEMO_QUICK=1, PE_DEMO_DB=PATH)
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Backend } from "@program-executor/cli"
import {
  Executor,
  ExecutorConfig,
  FatalError,
  Job,
  JobContext,
  JobLibrary,
  Program,
  type ProgramEvent,
  ProgramEvents,
  ProgramExecutor,
  type ProgramRecord,
  RetryableError
} from "@program-executor/core"
import { Duration, Effect, Layer, Logger, LogLevel, Ref, Schedule, Stream } from "effect"
import { randomUUID } from "node:crypto"

const argv = process.argv.slice(2)
const quick = argv.includes("--quick") || process.env.PE_DEMO_QUICK === "1"
const dbFlag = argv.indexOf("--db")
const filename = (dbFlag >= 0 ? argv[dbFlag + 1] : undefined) ?? process.env.PE_DEMO_DB ?? Backend.defaultFilename
const verbose = argv.includes("--verbose")
const tty = process.stdout.isTTY === true && !quick

/** Quick mode (CI) keeps the same story with every wait shrunk. */
const timing = quick
  ? { work: "5 millis", retry: "50 millis", page: "10 millis", budget: "35 millis" } as const
  : { work: "600 millis", retry: "1 second", page: "250 millis", budget: "1 second" } as const

// The jobs. Each is an Effect reading its JobContext; failures go through the typed error channel.

const work = Effect.sleep(timing.work)

const fetchData = Job.make("fetch_data", work)
const transform = Job.make("transform", work)
const sendReport = Job.make("send_report", work)

/** Fails twice with a retryable error, then succeeds: the step is retried after the job's retry delay. */
const flakyFetch = Job.make(
  "flaky_fetch",
  Effect.gen(function*() {
    const ctx = yield* JobContext
    yield* work
    if (ctx.attempt < 3) return yield* new RetryableError({ message: `upstream answered 503 (attempt ${ctx.attempt})` })
  }),
  { retrySchedule: Schedule.spaced(timing.retry), maxAttempts: 5 }
)

/**
 * Imports pages, storing the next page after each one. `checkpoint` stops a run that exceeded its time budget; the
 * step is retried (not counted as an attempt) and resumes from the stored page.
 */
const importPages = Job.make(
  "import_pages",
  Effect.gen(function*() {
    const ctx = yield* JobContext
    const { page = 0, pages = 12 } = yield* ctx.jobData.get
    for (let next = page; next < pages; next++) {
      yield* Effect.sleep(timing.page)
      yield* ctx.checkpoint({ page: next + 1 }, { maxExecutionTime: timing.budget })
    }
  }),
  { retrySchedule: Schedule.spaced(timing.retry) }
)

/** A permanent failure: the program stops here and its remaining jobs never run. */
const validatePayload = Job.make(
  "validate_payload",
  Effect.gen(function*() {
    const ctx = yield* JobContext
    if (typeof ctx.programData.payload?.email !== "string") {
      return yield* new FatalError({ message: "payload has no email address: nothing to send" })
    }
  })
)

/**
 * Starts another program from inside a job. The child's runId is stored in the job data first thing after creating
 * it, so a re-run of this step (after a crash) does not start a second child.
 */
const spawnChild = Job.make(
  "spawn_child",
  Effect.gen(function*() {
    const ctx = yield* JobContext
    const { childRunId } = yield* ctx.jobData.get
    if (childRunId !== undefined) return
    const runId = yield* ProgramExecutor.createProgram({
      jobs: ["fetch_data", "send_report"],
      programData: { ...ctx.programData, label: `child-of-${ctx.programData.label}` }
    }).pipe(Effect.mapError((error) => new RetryableError({ message: error.message })))
    yield* ctx.jobData.merge({ childRunId: runId })
  })
)

const jobs = [fetchData, transform, sendReport, flakyFetch, importPages, validatePayload, spawnChild] as const

const programs = (batch: string) => [
  { label: "retries-then-succeeds", jobs: ["flaky_fetch", "send_report"] },
  { label: "checkpoints-progress", jobs: ["import_pages", "send_report"], jobData: { import_pages: { pages: 12 } } },
  { label: "fails-fatally", jobs: ["fetch_data", "validate_payload", "send_report"] },
  { label: "starts-a-child", jobs: ["spawn_child", "send_report"] },
  { label: "plain-1", jobs: ["fetch_data", "transform", "send_report"] },
  { label: "plain-2", jobs: ["fetch_data", "transform", "send_report"] }
].map(({ label, ...program }) => ({
  ...program,
  programData: { demo: true, batch, label, ...(label === "fails-fatally" ? { payload: { name: "no email" } } : {}) }
}))

// Terminal output: a progress bar redrawn in place on a TTY, plain lines otherwise.

const label = (program: ProgramRecord | undefined) => String(program?.programData.label ?? "?")
const short = (runId: string) => runId.slice(0, 8)

const stepsDone = (program: ProgramRecord) => (program.finishedAt !== null ? program.jobs.length : program.step)

const progressLine = (batchPrograms: ReadonlyArray<ProgramRecord>) => {
  const total = batchPrograms.reduce((sum, program) => sum + program.jobs.length, 0)
  // An errored program's remaining jobs will never run: they count as settled.
  const done = batchPrograms.reduce(
    (sum, program) => sum + (program.erroredAt !== null ? program.jobs.length : stepsDone(program)),
    0
  )
  const count = (status: Program.ProgramStatus) => batchPrograms.filter((p) => Program.status(p) === status).length
  const width = 30
  const filled = total === 0 ? 0 : Math.round((done / total) * width)
  return `[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${done}/${total} steps · ` +
    `${count("finished")} finished, ${count("errored")} errored, ${count("in_progress")} in progress`
}

let barShown = false
const clearBar = () => {
  if (tty && barShown) process.stdout.write("\r\x1b[2K")
  barShown = false
}
const say = (line: string) =>
  Effect.sync(() => {
    clearBar()
    process.stdout.write(`${line}\n`)
  })
const drawBar = (line: string) =>
  Effect.sync(() => {
    if (!tty) return
    process.stdout.write(`\r\x1b[2K${line}`)
    barShown = true
  })

const describeEvent = (event: ProgramEvent, name: string): string | undefined => {
  switch (event._tag) {
    case "StepFinished":
      return `  ✓ ${name} ${short(event.runId)}: ${event.job} done (attempt ${event.attempt}, ${
        Duration.format(event.duration)
      })`
    case "RetryScheduled":
      return `  ↻ ${name} ${short(event.runId)}: ${event.job} will retry in ${
        Duration.format(event.delay)
      }: ${event.errorMessage}`
    case "ProgramErrored":
      return `  ✗ ${name} ${short(event.runId)}: ${event.job} failed${event.ignorable ? " (ignorable)" : ""}: ${
        event.errorMessage
      }`
    case "ProgramFinished":
      return `  ★ ${name} ${short(event.runId)}: finished`
    case "ProgramCreated":
      return `  + ${name} ${short(event.runId)}: created (${event.jobs.join(" → ")})`
    default:
      return undefined
  }
}

const summary = (batchPrograms: ReadonlyArray<ProgramRecord>, retries: ReadonlyMap<string, number>) => {
  const rows = batchPrograms.map((program) => [
    label(program),
    short(program.runId),
    Program.status(program),
    `${stepsDone(program)}/${program.jobs.length}`,
    String(retries.get(program.runId) ?? 0),
    program.errorMessage ?? ""
  ])
  const header = ["PROGRAM", "RUN ID", "STATUS", "STEPS", "RETRIES*", "LAST ERROR"]
  const widths = header.map((title, i) => Math.max(title.length, ...rows.map((row) => row[i]!.length)))
  const line = (cells: ReadonlyArray<string>) => cells.map((cell, i) => cell.padEnd(widths[i]!)).join("  ").trimEnd()
  const count = (status: Program.ProgramStatus) => batchPrograms.filter((p) => Program.status(p) === status).length
  return [
    "",
    line(header),
    line(widths.map((w) => "-".repeat(w))),
    ...rows.map(line),
    "",
    "* retries seen by this run of the demo",
    `summary: ${batchPrograms.length} programs, ${count("finished")} finished, ${count("errored")} errored, ${
      count("in_progress")
    } in progress`
  ].join("\n")
}

const isDemo = (program: ProgramRecord) => program.programData.demo === true

const main = Effect.gen(function*() {
  const executor = yield* ProgramExecutor
  const batchOf = (batch: string) =>
    executor.list({ order: "asc", limit: 1000 }).pipe(
      Effect.map((all) => all.filter((program) => isDemo(program) && program.programData.batch === batch))
    )

  // Unfinished programs of an earlier run are resumed, never doubled.
  const unfinished = (yield* executor.list({ inProgressOnly: true, order: "asc", limit: 1000 })).filter(isDemo)
  let batch: string
  if (unfinished.length > 0) {
    batch = String(unfinished[0]!.programData.batch)
    yield* say(`resuming ${unfinished.length} unfinished program(s) of an earlier run on ${filename}`)
  } else {
    batch = randomUUID()
    for (const program of programs(batch)) {
      const runId = yield* executor.createProgram(program)
      yield* say(`created ${program.programData.label} ${short(runId)}: ${program.jobs.join(" → ")}`)
    }
    yield* say(`${programs(batch).length} programs stored in ${filename}; a worker runs them (Ctrl-C stops it; run again to resume)`)
  }

  const known = new Map<string, ProgramRecord>()
  const retries = yield* Ref.make(new Map<string, number>())
  const nameOf = (runId: string) =>
    known.has(runId)
      ? Effect.succeed(label(known.get(runId)))
      : executor.get(runId).pipe(
        Effect.map((found) => (found._tag === "Some" ? (known.set(runId, found.value), label(found.value)) : "?")),
        Effect.orElseSucceed(() => "?")
      )

  yield* ProgramEvents.stream.pipe(
    Stream.runForEach((event) =>
      Effect.gen(function*() {
        if (event._tag === "RetryScheduled") {
          yield* Ref.update(retries, (map) => new Map(map).set(event.runId, (map.get(event.runId) ?? 0) + 1))
        }
        const line = describeEvent(event, yield* nameOf(event.runId))
        if (line !== undefined) yield* say(line)
      })
    ),
    Effect.forkScoped
  )
  yield* Effect.forkScoped(Executor.run)

  let last = ""
  while (true) {
    const current = yield* batchOf(batch)
    for (const program of current) known.set(program.runId, program)
    const line = progressLine(current)
    if (tty && (line !== last || !barShown)) yield* drawBar(line)
    else if (line !== last && !quick) yield* say(line)
    last = line
    if (current.every((program) => Program.status(program) !== "in_progress")) {
      clearBar()
      yield* say(summary(current, yield* Ref.get(retries)))
      return
    }
    yield* Effect.sleep(quick ? "20 millis" : "100 millis")
  }
}).pipe(
  Effect.scoped,
  Effect.onInterrupt(() =>
    Effect.sync(() => {
      clearBar()
      process.stdout.write("\nstopped: run `pnpm demo` again to resume the unfinished programs\n")
    })
  )
)

const live = Layer.mergeAll(
  JobLibrary.layer(...jobs),
  ExecutorConfig.layer({
    concurrency: 4,
    leaseDuration: Duration.seconds(10),
    heartbeatInterval: Duration.seconds(2),
    shutdownGrace: Duration.seconds(2),
    sweepInterval: Duration.seconds(5),
    staleAfter: Duration.seconds(10)
  })
).pipe(Layer.provideMerge(Backend.layer({ filename })), Layer.provideMerge(ProgramEvents.layer()))

main.pipe(
  Effect.provide(live),
  // The event lines tell the story; --verbose adds the executor's own logs.
  Logger.withMinimumLogLevel(verbose ? LogLevel.Info : LogLevel.None),
  NodeRuntime.runMain
)
