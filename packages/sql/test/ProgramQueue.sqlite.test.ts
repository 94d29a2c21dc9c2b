
import { programQueueConformance } from "../../core/test/conformance/ProgramQueueConformance.js"
import { storage } from "./utils.js"

programQueueConformance("sql queue on sqlite", storage("sqlite"))

