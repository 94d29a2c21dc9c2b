import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import { type Program, ProgramExecutor } from "@program-executor/core"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import {
  type BulkFilter,
  InvalidRequest,
  type ListParams,
  ProgramConflict,
  ProgramNotFound,
  ProgramsApi,
  StorageUnavailable,
  view
} from "../ProgramsApi.js"

type CoreError =
  | { readonly _tag: "InvalidProgramError"; readonly message: string }
  | { readonly _tag: "ProgramNotFoundError"; readonly runId: string; readonly message: string }
  | { readonly _tag: "ProgramStateError"; readonly runId: string; readonly message: string }
  | { readonly _tag: "RepositoryError"; readonly message: string }

/** The core's errors as the API's, each with its status code. */
export const toApiError = (error: CoreError) => {
  switch (error._tag) {
    case "InvalidProgramError":
      return new InvalidRequest({ message: error.message })
    case "ProgramNotFoundError":
      return new ProgramNotFound({ runId: error.runId, message: error.message })
    case "ProgramStateError":
      return new ProgramConflict({ runId: error.runId, message: error.message })
    case "RepositoryError":
      return new StorageUnavailable({ message: error.message })
  }
}

type ApiErrorOf<E> = E extends { readonly _tag: "InvalidProgramError" } ? InvalidRequest
  : E extends { readonly _tag: "ProgramNotFoundError" } ? ProgramNotFound
  : E extends { readonly _tag: "ProgramStateError" } ? ProgramConflict
  : StorageUnavailable

/** `toApiError` over an effect, keeping only the API errors its core errors can become. */
const toApi = <A, E extends CoreError, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, ApiErrorOf<E>, R> =>
  Effect.mapError(effect, (error) => toApiError(error) as ApiErrorOf<E>)

/** Only the fields that are set: the core's queries are exact optional properties. */
const defined = <A extends Record<string, unknown>>(value: A): { [K in keyof A]?: Exclude<A[K], undefined> } =>
  Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as any

export const toFilter = (filter: typeof BulkFilter.Type): Program.ProgramFilter => defined({ ...filter })

export const toListQuery = (params: ListParams): Program.ListQuery => ({
  ...defined({
    status: params.status,
    inProgressOnly: params.inProgressOnly,
    stepRetryCountGte: params.retriesGte,
    job: params.job,
    runIdPrefix: params.runId,
    createdAfter: params.createdAfter,
    createdBefore: params.createdBefore,
    dataContains: params.dataContains,
    after: params.after
  }),
  orderBy: "id",
  order: params.order ?? "desc",
  limit: params.limit ?? 50
})

/** The handlers of `ProgramsApi`'s `programs` group, on the `ProgramExecutor` in context. */
export const programsHandlers = HttpApiBuilder.group(ProgramsApi, "programs", (handlers) =>
  Effect.gen(function*() {
    const executor = yield* ProgramExecutor
    return handlers
      .handle("list", ({ urlParams }) =>
        Effect.gen(function*() {
          const query = toListQuery(urlParams)
          const programs = yield* toApi(executor.list(query))
          const last = programs.at(-1)
          return {
            programs: programs.map(view),
            nextAfter: last !== undefined && programs.length === query.limit ? last.id : null
          }
        }))
      .handle("get", ({ path }) =>
        toApi(executor.get(path.runId)).pipe(
          Effect.flatMap(Option.match({
            onNone: () =>
              Effect.fail(new ProgramNotFound({ runId: path.runId, message: `no program with runId ${path.runId}` })),
            onSome: (program) => Effect.succeed(view(program))
          }))
        ))
      .handle("create", ({ payload }) =>
        // startAfter is checked by the core, which names what is wrong with it.
        toApi(executor.createProgram(payload as Program.CreateProgramInput)).pipe(Effect.map((runId) => ({ runId }))))
      .handle("cancel", ({ path, payload }) =>
        toApi(executor.cancel(path.runId, payload.reason)).pipe(Effect.map(view)))
      .handle("resume", ({ path }) =>
        toApi(executor.resume(path.runId)).pipe(Effect.map(view)))
      .handle("cancelMany", ({ payload }) =>
        toApi(executor.cancelMany(toFilter(payload.filter), payload.reason)).pipe(Effect.map((count) => ({ count }))))
      .handle("resumeMany", ({ payload }) =>
        toApi(executor.resumeMany(toFilter(payload.filter))).pipe(Effect.map((count) => ({ count }))))
  }))
