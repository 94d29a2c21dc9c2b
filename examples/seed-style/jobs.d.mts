// Types for the plain JavaScript library beside this file (the old library shipped none).
import type { JobLibraryObject } from "@program-executor/compat"

declare const jobLibrary: JobLibraryObject
export default jobLibrary
