/**
 * Loads the jobs a worker runs from a module: a file exporting `Job`s (one by one, or in arrays), or a seed-style
 * library object `{ [jobName]: JobClass }` (the old library's shape), or old-style job classes exported one by one.
 */
import { Job } from "@program-executor/core"
import * as Effect from "effect/Effect"
import * as Predicate from "effect/Predicate"
import * as Schema from "effect/Schema"
import { resolve } from "node:path"
import { pathToFileURL } from "node:url"

export class JobModuleError extends Schema.TaggedError<JobModuleError>()("JobModuleError", {
  message: Schema.String
}) {}

export const isJob = (value: unknown): value is Job.Job<any> =>
  Predicate.hasProperty(value, "name") && typeof value.name === "string" && Predicate.hasProperty(value, "run") &&
  Effect.isEffect(value.run) && Predicate.hasProperty(value, "options")

export const isSeedJobClass = (value: unknown): value is Job.SeedJobClass =>
  typeof value === "function" && Predicate.hasProperty(value, "create") && typeof value.create === "function"

/**
 * The jobs of a library value. In a library object, a job class is named by its key (the old library looked jobs up
 * by key); a class exported on its own is named by its static `name`.
 */
export const collect = (
  exports: Record<string, unknown>,
  classesByKey: boolean
): Array<{ readonly job: Job.Job<any>; readonly source: unknown }> => {
  const jobs: Array<{ readonly job: Job.Job<any>; readonly source: unknown }> = []
  for (const [key, value] of Object.entries(exports)) {
    if (isJob(value)) jobs.push({ job: value, source: value })
    else if (Array.isArray(value)) jobs.push(...value.filter(isJob).map((job) => ({ job, source: job })))
    else if (isSeedJobClass(value)) {
      jobs.push({ job: Job.fromClass(value, classesByKey ? { name: key } : {}), source: value })
    }
  }
  return jobs
}

/** Imports the module (TypeScript works: the CLI runs under tsx) and returns its jobs; fails when it has none. */
export const load = (path: string): Effect.Effect<Array<Job.Job<any>>, JobModuleError> =>
  Effect.gen(function*() {
    const module = yield* Effect.tryPromise({
      try: () => import(pathToFileURL(resolve(path)).href) as Promise<Record<string, unknown>>,
      catch: (error) =>
        new JobModuleError({
          message: `cannot load job library ${path}: ${error instanceof Error ? error.message : String(error)}`
        })
    })
    const { default: defaultExport, ...named } = module
    const jobs = [
      ...(Predicate.isRecord(defaultExport) && !isJob(defaultExport)
        ? collect(defaultExport, true)
        : collect({ default: defaultExport }, false)),
      ...collect(named, false)
    ]
    // The same job exported twice (by name and in the default object) counts once; two different jobs under one
    // name are an error, named.
    const byName = new Map<string, { readonly job: Job.Job<any>; readonly source: unknown }>()
    for (const entry of jobs) {
      const seen = byName.get(entry.job.name)
      if (seen !== undefined && seen.source !== entry.source) {
        return yield* new JobModuleError({ message: `${path} defines job "${entry.job.name}" more than once` })
      }
      byName.set(entry.job.name, entry)
    }
    const unique = Array.from(byName.values(), (entry) => entry.job)
    if (unique.length === 0) {
      return yield* new JobModuleError({
        message: `${path} exports no jobs: export Job values (Job.make…), or a default object { jobName: JobClass }`
      })
    }
    return unique
  })
