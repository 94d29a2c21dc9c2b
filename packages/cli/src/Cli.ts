/**
 * The `program-executor` command: run a worker, create, list, show, cancel and resume programs, migrate the table.
 * Every command reads the backend from flags, falling back to the environment (`DATABASE_URL`, `AMQP_URL`,
 * `PE_TABLE_NAME`, `PE_QUEUE_NAME`, `PE_*` for the worker); with nothing set it uses the embedded SQLite file.
 */
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as CommandDescriptor from "@effect/cli/CommandDescriptor"
import * as HelpDoc from "@effect/cli/HelpDoc"
import * as Options from "@effect/cli/Options"
import * as Usage from "@effect/cli/Usage"
import * as ValidationError from "@effect/cli/ValidationError"
import {
  Executor,
  ExecutorConfig,
  type Job,
  JobLibrary,
  ProgramEvents,
  ProgramExecutor,
  ProgramNotFoundError
} from "@program-executor/core"
import * as Cause from "effect/Cause"
import * as Config from "effect/Config"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import { identity } from "effect/Function"
import * as HashMap from "effect/HashMap"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Predicate from "effect/Predicate"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import { ProgramsHttp } from "@program-executor/http"
import { readFileSync } from "node:fs"
import * as Backend from "./Backend.js"
import { programDetails, programJson, programTable } from "./internal/format.js"
import * as JobModule from "./JobModule.js"

/** A failure the user caused or can fix; printed as one line, without a stack trace. */
export class CliError extends Schema.TaggedError<CliError>()("CliError", { message: Schema.String }) {}

// Backend options, shared by every command.

const databaseUrl = Options.text("database-url").pipe(
  Options.withDescription(
    "postgres://…, mysql://…, sqlite:PATH or file:PATH. Env: DATABASE_URL. Unset: the embedded ./program-executor.db"
  ),
  Options.optional
)
const amqpUrl = Options.text("amqp-url").pipe(
  Options.withDescription("amqp://… to carry wake-ups on RabbitMQ. Env: AMQP_URL. Unset: the database is the queue"),
  Options.optional
)
const tableName = Options.text("table").pipe(
  Options.withDescription("The programs table. Env: PE_TABLE_NAME. Default: programs"),
  Options.optional
)
const queueName = Options.text("queue").pipe(
  Options.withDescription("The RabbitMQ queue (with --amqp-url). Env: PE_QUEUE_NAME"),
  Options.optional
)
const backendOptions = { databaseUrl, amqpUrl, tableName, queueName }

interface BackendFlags {
  readonly databaseUrl: Option.Option<string>
  readonly amqpUrl: Option.Option<string>
  readonly tableName: Option.Option<string>
  readonly queueName: Option.Option<string>
}

const fromEnv = (name: string) =>
  Config.option(Config.string(name)).pipe(Effect.map(Option.filter((value) => value !== "")), Effect.orDie)

const resolveBackend = (flags: BackendFlags): Effect.Effect<Backend.BackendOptions> =>
  Effect.gen(function*() {
    const pick = (flag: Option.Option<string>, env: Option.Option<string>) =>
      Option.getOrUndefined(Option.orElse(flag, () => env))
    return {
      databaseUrl: pick(flags.databaseUrl, yield* fromEnv("DATABASE_URL")),
      amqpUrl: pick(flags.amqpUrl, yield* fromEnv("AMQP_URL")),
      tableName: pick(flags.tableName, yield* fromEnv("PE_TABLE_NAME")),
      queueName: pick(flags.queueName, yield* fromEnv("PE_QUEUE_NAME"))
    }
  })

/**
 * A one-shot command tries a database that does not answer three times over about a second, then gives up with one
 * line; a worker keeps trying (the default: up to two minutes), since it may start before its database.
 */
const commandConnectRetry = Schedule.intersect(Schedule.exponential("200 millis"), Schedule.recurs(2))

/** Runs `effect` with the backend's services; a backend that cannot be reached fails with one clear line. */
const withBackend = <A, E, R>(
  flags: BackendFlags,
  effect: Effect.Effect<A, E, R>,
  connect: "once" | "wait" = "once"
) =>
  Effect.flatMap(resolveBackend(flags), (resolved) => {
    const options = connect === "once" ? { ...resolved, connectRetry: commandConnectRetry } : resolved
    return Effect.provide(
      effect,
      Backend.layer(options).pipe(
        Layer.mapError((error) =>
          new CliError({ message: `cannot open ${Backend.describe(options)}: ${messageOf(error)}` })
        )
      )
    ).pipe(
      // The database layer logs each failed attempt; a one-shot command reports the last one itself.
      connect === "once" ? Logger.withMinimumLogLevel(LogLevel.Error) : identity
    )
  })

const json = Options.boolean("json").pipe(Options.withDescription("Print JSON instead of a table"))

// worker

const jobsModule = Options.file("jobs", { exists: "yes" }).pipe(
  Options.withAlias("j"),
  Options.withDescription(
    "The job library: a module exporting Job values, or a default object { jobName: JobClass } (old-style classes)"
  )
)
const concurrency = Options.integer("concurrency").pipe(
  Options.withAlias("c"),
  Options.withDescription("Steps run at once. Env: PE_CONCURRENCY. Default: 10"),
  Options.optional
)
const skipUnknown = Options.boolean("skip-unknown-jobs").pipe(
  Options.withDescription("Skip a job the library lacks, as the old library did, instead of failing the program")
)

const worker = Command.make(
  "worker",
  { ...backendOptions, jobs: jobsModule, concurrency, skipUnknown },
  (flags) =>
    Effect.gen(function*() {
      const jobs = yield* JobModule.load(flags.jobs).pipe(Effect.mapError((error) => new CliError(error)))
      const backend = yield* resolveBackend(flags)
      const overrides: Partial<ExecutorConfig.ExecutorOptions> = {
        ...Option.match(flags.concurrency, { onNone: () => ({}), onSome: (value) => ({ concurrency: value }) }),
        ...(flags.skipUnknown ? { onUnknownJob: "skip" as const } : {})
      }
      const config = ExecutorConfig.layerFromEnv(overrides).pipe(
        Layer.mapError((error) => new CliError({ message: `bad worker configuration: ${String(error)}` }))
      )
      // Jobs may start programs: they see this worker's ProgramExecutor (no other service is provided to them).
      const library = JobLibrary.layer(...(jobs as Array<Job.Job<ProgramExecutor>>)).pipe(
        Layer.mapError((error) => new CliError({ message: error.message }))
      )
      return yield* Effect.logInfo(`worker on ${Backend.describe(backend)} with ${jobs.length} job(s)`).pipe(
        Effect.zipRight(Executor.run),
        Effect.provide(library),
        Effect.provide(config),
        (effect) => withBackend(flags, effect, "wait"),
        Effect.provide(workerLogger)
      )
    })
).pipe(Command.withDescription("Run programs: take their steps from the queue until stopped (SIGINT/SIGTERM)"))

/** Pretty logs on a terminal, one JSON object per line otherwise (a log collector); `PE_LOG_FORMAT` decides. */
const workerLogger = Layer.unwrapEffect(
  Effect.map(fromEnv("PE_LOG_FORMAT"), (format) => {
    const json = Option.match(format, { onNone: () => process.stdout.isTTY !== true, onSome: (value) => value === "json" })
    return json ? Logger.replace(Logger.prettyLoggerDefault, Logger.withConsoleLog(Logger.jsonLogger)) : Layer.empty
  })
)

// create

// A word after the job names that looks like a flag is a flag this command does not have (`create a b --typo k`
// used to create jobs named "--typo" and "k"): refused here, with the usage line (see `run`).
const jobNames = Args.text({ name: "job" }).pipe(
  Args.withDescription("Job names, in order (or give --file)"),
  Args.repeated,
  Args.mapEffect((names) => {
    const flag = names.find((name) => name.startsWith("-"))
    return flag === undefined
      ? Effect.succeed(names)
      : Effect.fail(HelpDoc.p(`unknown option ${flag} (a job name cannot start with "-")`))
  })
)
const programData = Options.text("program-data").pipe(
  Options.withAlias("p"),
  Options.withDescription("Program data, a JSON object available to every job"),
  Options.optional
)
const jobData = Options.text("job-data").pipe(
  Options.withAlias("d"),
  Options.withDescription("Job data, a JSON object keyed by job name"),
  Options.optional
)
const programFile = Options.text("file").pipe(
  Options.withAlias("f"),
  Options.withDescription("Read { jobs, programData, jobData } as JSON from a file, or from stdin with -"),
  Options.optional
)

const parseJson = (what: string, text: string): Effect.Effect<unknown, CliError> =>
  Effect.try({
    try: () => JSON.parse(text) as unknown,
    catch: (error) => new CliError({ message: `${what} is not valid JSON: ${(error as Error).message}` })
  })

const readInput = (path: string): Effect.Effect<string, CliError> =>
  Effect.try({
    try: () => readFileSync(path === "-" ? 0 : path, "utf8"),
    catch: (error) => new CliError({ message: `cannot read ${path === "-" ? "stdin" : path}: ${messageOf(error)}` })
  })

const create = Command.make(
  "create",
  { ...backendOptions, jobs: jobNames, programData, jobData, file: programFile, json },
  (flags) =>
    Effect.gen(function*() {
      const fromFile = yield* Option.match(flags.file, {
        onNone: () => Effect.succeed({} as Record<string, unknown>),
        onSome: (path) =>
          readInput(path).pipe(
            Effect.flatMap((text) => parseJson(path === "-" ? "stdin" : path, text)),
            Effect.filterOrFail(
              Predicate.isRecord,
              () => new CliError({ message: "the program file must hold a JSON object { jobs, programData, jobData }" })
            )
          )
      })
      const input: Record<string, unknown> = { ...fromFile }
      if (flags.jobs.length > 0) input.jobs = flags.jobs
      if (Option.isSome(flags.programData)) input.programData = yield* parseJson("--program-data", flags.programData.value)
      if (Option.isSome(flags.jobData)) input.jobData = yield* parseJson("--job-data", flags.jobData.value)
      if (input.jobs === undefined) {
        return yield* new CliError({ message: "no jobs: name them (create first_job second_job) or give --file" })
      }
      const runId = yield* withBackend(flags, ProgramExecutor.createProgram(input as any))
      yield* Console.log(flags.json ? JSON.stringify({ runId }) : runId)
    })
).pipe(Command.withDescription("Create a program and print its runId"))

// list

const inProgress = Options.boolean("in-progress").pipe(
  Options.withDescription("Only programs neither finished nor errored")
)
const status = Options.choice("status", ["in_progress", "finished", "errored"]).pipe(
  Options.withDescription("Only programs with this status"),
  Options.optional
)
const retryCountGte = Options.integer("retry-count-gte").pipe(
  Options.withDescription("Only programs whose current step was retried at least this many times"),
  Options.optional
)
const order = Options.choice("order", ["desc", "asc"]).pipe(
  Options.withDescription("By id: newest first (desc, default) or oldest first"),
  Options.withDefault("desc" as const)
)
const limit = Options.integer("limit").pipe(
  Options.withAlias("n"),
  Options.withDescription("At most this many programs"),
  Options.withDefault(50)
)

const list = Command.make(
  "list",
  { ...backendOptions, inProgress, status, retryCountGte, order, limit, json },
  (flags) =>
    Effect.gen(function*() {
      const programs = yield* withBackend(
        flags,
        ProgramExecutor.list({
          inProgressOnly: flags.inProgress,
          ...Option.match(flags.status, { onNone: () => ({}), onSome: (value) => ({ status: value }) }),
          ...Option.match(flags.retryCountGte, { onNone: () => ({}), onSome: (value) => ({ stepRetryCountGte: value }) }),
          orderBy: "id",
          order: flags.order,
          limit: flags.limit
        })
      )
      yield* Console.log(
        flags.json
          ? JSON.stringify(programs.map(programJson), null, 2)
          : programs.length === 0
          ? "no programs"
          : programTable(programs)
      )
    })
).pipe(Command.withDescription("List programs, newest first"))

// show, cancel, resume

const runId = Args.text({ name: "runId" }).pipe(Args.withDescription("The program's runId"))

const notFound = (id: string) => new CliError({ message: new ProgramNotFoundError({ runId: id }).message })

const show = Command.make(
  "show",
  { ...backendOptions, runId, json },
  (flags) =>
    Effect.gen(function*() {
      const program = yield* withBackend(flags, ProgramExecutor.get(flags.runId)).pipe(
        Effect.flatMap(Option.match({ onNone: () => Effect.fail(notFound(flags.runId)), onSome: Effect.succeed }))
      )
      yield* Console.log(flags.json ? JSON.stringify(programJson(program), null, 2) : programDetails(program))
    })
).pipe(Command.withDescription("Show one program: its jobs, step, data and error"))

const reason = Options.text("reason").pipe(
  Options.withAlias("r"),
  Options.withDescription("Stored as the program's error_message"),
  Options.withDefault("cancelled")
)

const cancel = Command.make(
  "cancel",
  { ...backendOptions, runId, reason },
  (flags) =>
    withBackend(flags, ProgramExecutor.cancel(flags.runId, flags.reason)).pipe(
      Effect.zipRight(Console.log(`cancelled ${flags.runId}`))
    )
).pipe(Command.withDescription("Cancel a program: sets errored_at; a running job is interrupted at its next heartbeat"))

const resume = Command.make(
  "resume",
  { ...backendOptions, runId },
  (flags) =>
    withBackend(flags, ProgramExecutor.resume(flags.runId)).pipe(
      Effect.flatMap((program) =>
        Console.log(`resumed ${flags.runId} at step ${program.step + 1}/${program.jobs.length}`)
      )
    )
).pipe(Command.withDescription("Run an errored or cancelled program again from the step where it stopped"))

const migrate = Command.make(
  "migrate",
  backendOptions,
  (flags) =>
    Effect.flatMap(resolveBackend(flags), (options) =>
      withBackend(flags, Console.log(`table ready on ${Backend.describe(options)}`)))
).pipe(Command.withDescription("Create or update the programs table (workers and other commands also do it)"))

// serve

const port = Options.integer("port").pipe(
  Options.withDescription("The HTTP port (0: any free port). Default: 8080"),
  Options.withDefault(ProgramsHttp.defaultPort)
)
const host = Options.text("host").pipe(
  Options.withDescription("The address to bind. Default: 127.0.0.1 (this machine only)"),
  Options.withDefault(ProgramsHttp.defaultHost)
)
const token = Options.redacted("token").pipe(
  Options.withDescription("Required by every route but /healthz (Bearer, or the /login cookie). Env: PE_HTTP_TOKEN"),
  Options.optional
)
const readOnly = Options.boolean("read-only").pipe(
  Options.withDescription("Refuse every route that changes something (create, cancel, resume)")
)

const serve = Command.make(
  "serve",
  { ...backendOptions, port, host, token, readOnly },
  (flags) =>
    Effect.gen(function*() {
      const backend = yield* resolveBackend(flags)
      const fromEnvToken = Option.map(yield* fromEnv("PE_HTTP_TOKEN"), Redacted.make)
      const chosenToken = Option.getOrUndefined(Option.orElse(flags.token, () => fromEnvToken))
      const server = ProgramsHttp.serve({
        port: flags.port,
        host: flags.host,
        token: chosenToken,
        readOnly: flags.readOnly
      }).pipe(
        Layer.mapError((error) => new CliError({ message: `cannot listen on ${flags.host}:${flags.port}: ${messageOf(error)}` }))
      )
      yield* Effect.logInfo(
        `serving ${Backend.describe(backend)}${chosenToken === undefined ? "" : " (token required)"}` +
          `${flags.readOnly ? " read-only" : ""}`
      )
      // The events of this process's executor feed /api/events: the server and the executor share one hub.
      return yield* Layer.launch(server).pipe(
        (effect) => withBackend(flags, effect, "wait"),
        Effect.provide(ProgramEvents.layer()),
        Effect.provide(workerLogger)
      )
    })
).pipe(Command.withDescription("Serve the HTTP API, GraphQL, /metrics and the dashboard over the configured storage"))

export const command = Command.make("program-executor").pipe(
  Command.withDescription(
    "Fault-tolerant programs of jobs. Without --database-url / DATABASE_URL, everything runs on ./program-executor.db"
  ),
  Command.withSubcommands([worker, create, list, show, cancel, resume, migrate, serve])
)

export const messageOf = (error: unknown): string => {
  if (Predicate.hasProperty(error, "message") && typeof error.message === "string" && error.message !== "") {
    const cause = Predicate.hasProperty(error, "cause") ? error.cause : undefined
    // SqlError and friends say "Failed to connect"; the driver's reason is in the cause.
    const detail = cause !== undefined && cause !== error ? messageOf(cause) : ""
    return detail !== "" && !error.message.includes(detail) ? `${error.message}: ${detail}` : error.message
  }
  if (Predicate.hasProperty(error, "_tag") && typeof error._tag === "string") return error._tag
  if (Predicate.hasProperty(error, "errors") && Array.isArray(error.errors)) {
    return error.errors.map(messageOf).join("; ")
  }
  return String(error)
}

const debug = () => process.env.PE_DEBUG === "1"

/** `Usage: program-executor <command> …`: the command named in `args` (after node and the script), else the list. */
const usageLine = (args: ReadonlyArray<string>): string => {
  const subcommands = Command.getSubcommands(command)
  const name = args.slice(2).find((arg) => !arg.startsWith("-"))
  const subcommand = name === undefined ? Option.none() : HashMap.get(subcommands, name)
  const usage = Option.match(subcommand, {
    onNone: () => `<${[...HashMap.keys(subcommands)].join(" | ")}> …`,
    onSome: (found) => HelpDoc.toAnsiText(Usage.getHelp(CommandDescriptor.getUsage(found))).trim()
  })
  return `Usage: program-executor ${usage}\nRun program-executor ${Option.isSome(subcommand) ? `${name} ` : ""}--help for details.`
}

/**
 * Runs the command line. Whatever fails is printed as `program-executor: <message>` on stderr and the effect fails
 * (so `runMain` exits 1); `PE_DEBUG=1` prints the whole cause as well. Usage errors are printed by @effect/cli.
 */
export const run = (argv: ReadonlyArray<string>) =>
  Command.run(command, { name: "program-executor", version: "0.1.0" })(argv).pipe(
    Effect.tapErrorCause((cause) => {
      if (Cause.isInterruptedOnly(cause)) return Effect.void
      const failure = Cause.failureOption(cause)
      // @effect/cli has printed what is wrong; the usage line says what is right.
      if (Option.isSome(failure) && ValidationError.isValidationError(failure.value)) {
        return ValidationError.isHelpRequested(failure.value) ? Effect.void : Console.error(usageLine(argv))
      }
      const error = Option.isSome(failure) ? failure.value : Cause.squash(cause)
      return Console.error(`program-executor: ${messageOf(error)}`).pipe(
        Effect.zipRight(debug() ? Console.error(Cause.pretty(cause)) : Effect.void)
      )
    })
  )
