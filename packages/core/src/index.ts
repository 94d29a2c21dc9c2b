export * as Executor from "./Executor.js"
export * as ExecutorConfig from "./ExecutorConfig.js"
export * as Job from "./Job.js"
export * from "./JobContext.js"
export * from "./JobError.js"
export * from "./JobLibrary.js"
export * as Program from "./Program.js"
export {
  InvalidProgramError,
  ProgramNotFoundError,
  type ProgramRecord,
  ProgramStateError,
  type WakeUp
} from "./Program.js"
export * from "./ProgramEvents.js"
export * from "./ProgramExecutor.js"
export * as ProgramExecutorTest from "./ProgramExecutorTest.js"
export * from "./ProgramQueue.js"
export * from "./ProgramRepository.js"
export * as Url from "./Url.js"
