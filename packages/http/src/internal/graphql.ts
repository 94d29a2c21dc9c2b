/**
 * The old library's GraphQL schema, field for field, answered from `ProgramExecutor.list`. graphql-js 16: version 17
 * needs Node 22 and this project supports Node 20.
 */
import { type ProgramExecutorService, type ProgramRecord } from "@program-executor/core"
import * as Effect from "effect/Effect"
import * as Runtime from "effect/Runtime"
import {
  graphql,
  GraphQLBoolean,
  GraphQLEnumType,
  GraphQLInputObjectType,
  GraphQLInt,
  GraphQLList,
  GraphQLNonNull,
  GraphQLObjectType,
  GraphQLSchema,
  GraphQLString
} from "graphql"

// Field types as the old schema had them: jobData and programData as JSON strings; timestamps as String, which
// graphql-js serializes from a Date through valueOf (milliseconds since the epoch), as the old library did.
const Program = new GraphQLObjectType<ProgramRecord>({
  name: "Program",
  fields: {
    id: { type: GraphQLInt },
    runId: { type: GraphQLString },
    jobs: { type: new GraphQLList(GraphQLString) },
    jobData: { type: GraphQLString, resolve: (program) => JSON.stringify(program.jobData) },
    programData: { type: GraphQLString, resolve: (program) => JSON.stringify(program.programData) },
    step: { type: GraphQLInt },
    finishedAt: { type: GraphQLString },
    erroredAt: { type: GraphQLString },
    errorMessage: { type: GraphQLString },
    stepRetryCount: { type: GraphQLInt },
    createdAt: { type: GraphQLString },
    updatedAt: { type: GraphQLString }
  }
})

const ProgramFilter = new GraphQLInputObjectType({
  name: "ProgramFilter",
  fields: {
    inProgressOnly: { type: GraphQLBoolean, defaultValue: false },
    stepRetryCountGte: { type: GraphQLInt, defaultValue: 0 }
  }
})

const Order = new GraphQLEnumType({ name: "Order", values: { ASC: { value: "asc" }, DESC: { value: "desc" } } })

const OrderByInput = new GraphQLInputObjectType({
  name: "OrderByInput",
  fields: { id: { type: Order, defaultValue: "desc" } }
})

interface ProgramsArgs {
  readonly filter?: { readonly inProgressOnly?: boolean; readonly stepRetryCountGte?: number }
  readonly orderBy?: { readonly id?: "asc" | "desc" }
}

/** Rows read per statement; the old query had no limit, so pages are read until the table is exhausted. */
const pageSize = 1000

/** A table that is not there (dropped, or never migrated on this database) answers like an empty one, as before. */
const isMissingTable = (message: string) =>
  /no such table|does not exist|doesn't exist|undefined table|ER_NO_SUCH_TABLE/i.test(message)

const allPrograms = (executor: ProgramExecutorService, args: ProgramsArgs) =>
  Effect.gen(function*() {
    const found: Array<ProgramRecord> = []
    for (let offset = 0;; offset += pageSize) {
      const page = yield* executor.list({
        inProgressOnly: args.filter?.inProgressOnly ?? false,
        stepRetryCountGte: args.filter?.stepRetryCountGte ?? 0,
        orderBy: "id",
        order: args.orderBy?.id ?? "desc",
        limit: pageSize,
        offset
      })
      found.push(...page)
      if (page.length < pageSize) return found
    }
  }).pipe(
    Effect.catchIf(
      (error) => error._tag === "RepositoryError" && isMissingTable(error.message),
      () => Effect.succeed([] as Array<ProgramRecord>)
    )
  )

export const makeSchema = (executor: ProgramExecutorService, runtime: Runtime.Runtime<never>) =>
  new GraphQLSchema({
    query: new GraphQLObjectType({
      name: "Query",
      fields: {
        programs: {
          type: new GraphQLNonNull(new GraphQLList(new GraphQLNonNull(Program))),
          args: {
            filter: { type: ProgramFilter, defaultValue: { inProgressOnly: false, stepRetryCountGte: 0 } },
            orderBy: { type: OrderByInput, defaultValue: { id: "desc" } }
          },
          resolve: (_source, args: ProgramsArgs) => Runtime.runPromise(runtime)(allPrograms(executor, args))
        }
      }
    })
  })

export interface GraphQLRequest {
  readonly query: string
  readonly variables?: Record<string, unknown> | null | undefined
  readonly operationName?: string | null | undefined
}

/** Runs one request; the result is what graphql-js returns (`{ data, errors }`). */
export const execute = (schema: GraphQLSchema, request: GraphQLRequest) =>
  Effect.promise(() =>
    graphql({
      schema,
      source: request.query,
      variableValues: request.variables ?? null,
      operationName: request.operationName ?? null
    })
  )
