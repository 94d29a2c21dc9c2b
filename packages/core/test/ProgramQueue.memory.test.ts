import { Layer } from "effect"
import { ProgramQueue, ProgramRepository } from "@program-executor/core"
import { programQueueConformance } from "./conformance/ProgramQueueConformance.js"

programQueueConformance("memory", () => Layer.merge(ProgramQueue.layerMemory, ProgramRepository.layerMemory))
