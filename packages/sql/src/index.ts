export * as SqlDatabase from "./SqlDatabase.js"
export * as SqlProgramExecutor from "./SqlProgramExecutor.js"
export * as SqlProgramQueue from "./SqlProgramQueue.js"
export * as SqlProgramRepository from "./SqlProgramRepository.js"
