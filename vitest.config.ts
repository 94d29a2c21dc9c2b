import { defineConfig } from "vitest/config"

const project = (
  name: string,
  dir: string,
  options: { readonly singleFork?: boolean; readonly exclude?: Array<string> } = {}
) => ({
  test: {
    name,
    include: [`${dir}/**/*.test.ts`],
    exclude: ["**/node_modules/**", ...(options.exclude ?? [])],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Suites that share a real database or broker, or start worker processes, run one file at a time.
    ...(options.singleFork ? { pool: "forks" as const, poolOptions: { forks: { singleFork: true } } } : {})
  }
})

export default defineConfig({
  test: {
    projects: [
      project("core", "packages/core/test"),
      project("sql", "packages/sql/test"),
      project("amqp", "packages/amqp/test"),
      project("cli", "packages/cli/test"),
      project("http", "packages/http/test"),
      project("compat", "packages/compat/test"),
      project("examples", "examples"),
      project("e2e", "test", { singleFork: true, exclude: ["test/faults/**"] })
    ]
  }
})
