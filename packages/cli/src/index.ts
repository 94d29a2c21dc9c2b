export * as Backend from "./Backend.js"
export * as Cli from "./Cli.js"
export * as JobModule from "./JobModule.js"
