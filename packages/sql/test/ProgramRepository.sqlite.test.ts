
import { programRepositoryConformance } from "../../core/test/conformance/ProgramRepositoryConformance.js"
import { execute, repository } from "./utils.js"

programRepositoryConformance("sqlite", repository("sqlite"), { execute: execute("sqlite") })

