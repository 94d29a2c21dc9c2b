import { defineConfig } from "vitest/config"

/**
 * The fault suite: it stops and starts the shared PostgreSQL and RabbitMQ and kills worker processes, so it runs
 * alone, one file at a time, after the main suite (`pnpm test:faults`).
 */
export default defineConfig({
  test: {
    name: "faults",
    include: ["test/faults/**/*.test.ts"],
    testTimeout: 300_000,
    hookTimeout: 120_000,
    pool: "forks",
    poolOptions: { forks: { singleFork: true } },
    fileParallelism: false,
    // Scenarios that stop a shared service run only here, never beside the normal suite.
    env: { PE_FAULTS: "1" },
    passWithNoTests: true
  }
})
