export * as AmqpConnection from "./AmqpConnection.js"
export * as AmqpProgramQueue from "./AmqpProgramQueue.js"
