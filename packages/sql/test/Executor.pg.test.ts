import { describeWithService } from "../../core/test/utils/services.js"
import { executorConformance } from "../../core/test/conformance/ExecutorConformance.js"
import { storage } from "./utils.js"

describeWithService("DATABASE_URL", "PostgreSQL", (url) => {
  executorConformance("postgres", storage("pg", url), { claimsWhileDequeuing: true })
})
