import { describeWithService } from "../../core/test/utils/services.js"
import { programQueueConformance } from "../../core/test/conformance/ProgramQueueConformance.js"
import { storage } from "./utils.js"

describeWithService("MYSQL_URL", "MariaDB", (url) => {
programQueueConformance("sql queue on mysql", storage("mysql", url))
})
