import { ProgramQueue, ProgramRepository } from "@program-executor/core"
import { Layer } from "effect"
import { executorConformance } from "./conformance/ExecutorConformance.js"

executorConformance("memory", () => Layer.merge(ProgramRepository.layerMemory, ProgramQueue.layerMemory))
