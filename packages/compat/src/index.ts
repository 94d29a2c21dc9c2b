export { IgnorableError, RetryableError } from "./errors.js"
export {
  type JobClass,
  type JobLibraryObject,
  ProgramExecutor,
  type ProgramExecutorConfig,
  type ProgramErrorEvent
} from "./ProgramExecutor.js"
