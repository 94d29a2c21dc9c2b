import { ProgramRepository } from "@program-executor/core"
import { programRepositoryConformance } from "./conformance/ProgramRepositoryConformance.js"

programRepositoryConformance("memory", () => ProgramRepository.layerMemory)
