// Stryker "ignorer" plugin: mutants inside log calls only change what is logged, which no test should pin down, and
// each such survivor costs a full run of the covering tests. Metrics and events stay mutated.
const logCalls = new Set(["log", "logDebug", "logInfo", "logWarning", "logError", "logFatal", "annotateLogs"])

export const strykerPlugins = [
  {
    kind: "Ignore",
    name: "logging",
    value: {
      shouldIgnore(path) {
        const node = path.node
        if (node.type !== "CallExpression" || node.callee.type !== "MemberExpression") return undefined
        const { object, property } = node.callee
        return object.type === "Identifier" && object.name === "Effect" && property.type === "Identifier" &&
            logCalls.has(property.name)
          ? "log text only"
          : undefined
      }
    }
  }
]
