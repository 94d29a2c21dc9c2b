import { executorConformance } from "../../core/test/conformance/ExecutorConformance.js"
import { storage } from "./utils.js"

executorConformance("sqlite", storage("sqlite"), { claimsWhileDequeuing: true })
