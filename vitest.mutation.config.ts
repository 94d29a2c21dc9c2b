import { defineConfig } from "vitest/config"

// Only the core project's in-memory tests: fast and service-free, so a Stryker run fits in minutes
// (see stryker.config.json and CONTRIBUTING.md). A mutant that hangs a test fails it at 20 s: counted as killed.
export default defineConfig({
  test: {
    include: ["packages/core/test/**/*.test.ts"],
    exclude: ["**/node_modules/**"],
    testTimeout: 20_000,
    hookTimeout: 30_000
  }
})
