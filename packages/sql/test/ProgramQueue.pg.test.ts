import { describeWithService } from "../../core/test/utils/services.js"
import { programQueueConformance } from "../../core/test/conformance/ProgramQueueConformance.js"
import { storage } from "./utils.js"

describeWithService("DATABASE_URL", "PostgreSQL", (url) => {
programQueueConformance("sql queue on pg", storage("pg", url))
})
