export * as ProgramsApi from "./ProgramsApi.js"
export * as ProgramsHttp from "./ProgramsHttp.js"
