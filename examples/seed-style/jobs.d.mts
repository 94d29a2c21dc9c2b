// Types for the plain JavaScript library beside this file (the old library shipped none).
import type { JobLibraryObject } from "../../packages/compat/src/index.js"

declare const jobLibrary: JobLibraryObject
export default jobLibrary
