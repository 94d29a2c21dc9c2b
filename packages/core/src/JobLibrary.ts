/** The jobs a worker knows, by name. A program naming a job the worker does not know is handled by policy. */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import type * as Job from "./Job.js"

export interface JobLibraryService {
  readonly get: (name: string) => Job.Job | undefined
  readonly names: ReadonlyArray<string>
}

export class JobLibraryError extends Schema.TaggedError<JobLibraryError>()("JobLibraryError", {
  message: Schema.String
}) {}

/**
 * Builds a library from jobs, capturing the services they need. Fails, naming the job, on a duplicate or an
 * empty name.
 */
const make = <const Jobs extends ReadonlyArray<Job.Job<any>>>(
  ...jobs: Jobs
): Effect.Effect<JobLibraryService, JobLibraryError, Job.Context<Jobs[number]>> =>
  Effect.gen(function*() {
    const context = yield* Effect.context<Job.Context<Jobs[number]>>()
    const byName = new Map<string, Job.Job>()
    for (const job of jobs) {
      if (typeof job.name !== "string" || job.name === "") {
        return yield* new JobLibraryError({ message: "a job name must be a non-empty string" })
      }
      if (byName.has(job.name)) {
        return yield* new JobLibraryError({ message: `job "${job.name}" is defined more than once` })
      }
      byName.set(job.name, { ...job, run: Effect.provide(job.run, context) })
    }
    return { get: (name) => byName.get(name), names: Array.from(byName.keys()) }
  })

const layer = <const Jobs extends ReadonlyArray<Job.Job<any>>>(
  ...jobs: Jobs
): Layer.Layer<JobLibrary, JobLibraryError, Job.Context<Jobs[number]>> => Layer.effect(JobLibrary, make(...jobs))

export class JobLibrary extends Context.Tag("@program-executor/core/JobLibrary")<JobLibrary, JobLibraryService>() {
  static readonly make = make
  static readonly layer = layer
}

