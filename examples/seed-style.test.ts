// The seed-style example runs unchanged through the facade.
import { describe, expect, it } from "@effect/vitest"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { runSeedStyle } from "./seed-style/run.js"

describe("seed-style job library through the Promise facade", () => {
  it("runs to the end on SQLite, retrying the retryable error", { timeout: 60_000 }, async () => {
    const program = await runSeedStyle({ filename: join(mkdtempSync(join(tmpdir(), "pe-seed-")), "seed.db") })
    expect(program.finishedAt).not.toBeNull()
    expect(program.jobData).toEqual({
      export_contacts: { pages: 5, page: 5, exportedFor: 42, runId: program.runId },
      upload_export: { attempts: 2 }
    })
  })
})
