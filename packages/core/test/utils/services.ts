/**
 * Where integration tests find their services. Each reads a URL from the environment; `.ci/run` sets them to the
 * local services. A missing URL skips the suite with a loud message on a developer's machine, and fails the run when
 * `CI` is set (to anything but "false") or `PE_REQUIRE_SERVICES=1`, so CI can never pass by skipping.
 *
 * (DESIGN.md also mentions testcontainers; no Docker engine runs on our machines, so it is not wired in: set the URL.)
 */
import { describe } from "@effect/vitest"

export type ServiceVariable = "DATABASE_URL" | "MYSQL_URL" | "AMQP_URL"

/** Any non-empty `CI` but "false" counts: CI systems set it to "true", "1" or their own name. */
const required = () =>
  (process.env.CI !== undefined && process.env.CI !== "" && process.env.CI !== "false") ||
  process.env.PE_REQUIRE_SERVICES === "1"

export const serviceUrl = (variable: ServiceVariable): string | undefined => {
  const url = process.env[variable]
  if (url !== undefined && url !== "") return url
  if (required()) {
    throw new Error(`${variable} is not set, and CI=true / PE_REQUIRE_SERVICES=1 require every service`)
  }
  console.warn(`\n!!! ${variable} is not set: skipping the tests that need it (see README, "Running the tests")\n`)
  return undefined
}

/** `describe` when the service's URL is set, a loudly skipped `describe` otherwise. */
export const describeWithService = (
  variable: ServiceVariable,
  name: string,
  body: (url: string) => void
) => {
  const url = serviceUrl(variable)
  if (url === undefined) describe.skip(`${name} (${variable} not set)`, () => {})
  else describe(name, () => body(url))
}
