import { ProgramQueue, ProgramRepository } from "@program-executor/core"
import { Layer } from "effect"
import { tracingConformance } from "./conformance/TracingConformance.js"

tracingConformance("memory", () => Layer.merge(ProgramRepository.layerMemory, ProgramQueue.layerMemory))
