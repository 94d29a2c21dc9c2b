import { describeWithService } from "../../core/test/utils/services.js"
import { programRepositoryConformance } from "../../core/test/conformance/ProgramRepositoryConformance.js"
import { execute, repository } from "./utils.js"

describeWithService("DATABASE_URL", "PostgreSQL", (url) => {
programRepositoryConformance("pg", repository("pg", url), { execute: execute("pg", url) })
})
