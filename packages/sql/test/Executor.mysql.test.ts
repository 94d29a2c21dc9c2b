import { describeWithService } from "../../core/test/utils/services.js"
import { executorConformance } from "../../core/test/conformance/ExecutorConformance.js"
import { storage } from "./utils.js"

describeWithService("MYSQL_URL", "MariaDB", (url) => {
  executorConformance("mariadb", storage("mysql", url), { claimsWhileDequeuing: true })
})
