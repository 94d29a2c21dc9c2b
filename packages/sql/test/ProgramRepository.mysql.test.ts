import { describeWithService } from "../../core/test/utils/services.js"
import { programRepositoryConformance } from "../../core/test/conformance/ProgramRepositoryConformance.js"
import { execute, repository } from "./utils.js"

describeWithService("MYSQL_URL", "MariaDB", (url) => {
programRepositoryConformance("mysql", repository("mysql", url), { execute: execute("mysql", url) })
})
