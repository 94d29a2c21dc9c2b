/**
 * The dashboard, end to end: a real server over a real SQLite file, driven in Debian's headless Chromium through
 * playwright-core. Every wait is on the page's DOM (bounded), never on time.
 *
 * Without `/usr/bin/chromium` the suite is skipped loudly, and fails under CI (any non-empty `CI` but "false", or
 * `PE_REQUIRE_SERVICES=1`), like the suites that need a database or a broker. `.ci/run` installs it.
 * `PE_UPDATE_SCREENSHOT=1` also writes the README's screenshot, `docs/dashboard.png`.
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import * as HttpServer from "@effect/platform/HttpServer"
import { SqlClient } from "@effect/sql"
import { ProgramEvents, ProgramExecutor } from "@program-executor/core"
import { SqlDatabase, SqlProgramQueue, SqlProgramRepository } from "@program-executor/sql"
import { Effect, Layer, ManagedRuntime } from "effect"
import { existsSync, mkdirSync, rmSync } from "node:fs"
import { createServer } from "node:http"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { type Browser, chromium, type Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { ProgramsHttp } from "../src/index.js"

const executablePath = "/usr/bin/chromium"
const root = fileURLToPath(new URL("../../../", import.meta.url))
const artifact = join(root, "reports", "dashboard.png")
const readmeScreenshot = join(root, "docs", "dashboard.png")

/** The same rule as the service URLs (packages/core/test/utils/services.ts): CI can never pass by skipping. */
const required = () =>
  (process.env.CI !== undefined && process.env.CI !== "" && process.env.CI !== "false") ||
  process.env.PE_REQUIRE_SERVICES === "1"

const chromiumPresent = existsSync(executablePath)
if (!chromiumPresent && !required()) {
  console.warn(`\n!!! ${executablePath} is missing: skipping the dashboard's browser test (apt-get install chromium)\n`)
}

/** How long the page may take to show an outcome: a poll period (2.5 s) and a slow shared machine. */
const bound = 15_000

const table = `dashboard_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`
const file = join(tmpdir(), `program-executor-${table}.db`)

const storage = Layer.mergeAll(
  SqlProgramRepository.layer({ tableName: table }),
  SqlProgramQueue.layer({ tableName: table })
)
const services = ProgramExecutor.layer.pipe(
  Layer.provideMerge(storage),
  Layer.provideMerge(ProgramEvents.layer()),
  Layer.provideMerge(SqlDatabase.layerSqlite(file))
)
const server = HttpApiBuilder.serve().pipe(
  Layer.provide(ProgramsHttp.layer()),
  Layer.provideMerge(NodeHttpServer.layer(createServer, { port: 0, host: "127.0.0.1" })),
  Layer.provideMerge(services)
)

const sql = (statement: string) =>
  Effect.flatMap(SqlClient.SqlClient, (client) => client.unsafe(statement).raw).pipe(Effect.asVoid)

const jobs = ["fetch_orders", "enrich", "send_report"]

/** Programs in every state, as workers would have left them: SQL stands in for the workers (none run here). */
const fixtures = Effect.gen(function*() {
  const executor = yield* ProgramExecutor
  const create = (shop: number) =>
    executor.createProgram({ jobs, programData: { shop }, jobData: { fetch_orders: { page: 0 } } })
  const fresh = yield* create(1)
  const retrying = yield* create(2)
  const errored = yield* create(3)
  const finished = yield* create(4)
  const later = yield* create(5)
  const update = (runId: string, set: string, minutesAgo: number) =>
    sql(
      `UPDATE ${table} SET ${set}${set === "" ? "" : ", "}created_at = strftime('%Y-%m-%d %H:%M:%f', 'now', ` +
        `'-${minutesAgo} minutes') WHERE run_id = '${runId}'`
    )
  yield* update(fresh, "", 2)
  yield* update(
    retrying,
    `step = 1, step_retry_count = 3, error_message = 'rate limited (HTTP 429)', ` +
      `job_data = '{"fetch_orders":{"page":12}}'`,
    41
  )
  yield* update(
    errored,
    `step = 2, errored_at = CURRENT_TIMESTAMP, error_message = 'SMTP refused: mailbox unavailable'`,
    95
  )
  yield* update(finished, `step = 2, finished_at = CURRENT_TIMESTAMP`, 180)
  yield* update(later, "", 1)
  return { fresh, retrying, errored, finished, later }
})

const rows = (page: Page) => page.locator("tbody tr[data-run-id]")
const row = (page: Page, runId: string) => page.locator(`tbody tr[data-run-id="${runId}"]`)

/** The run IDs the table shows, once it shows exactly `expected` (in any order). */
const waitForRows = async (page: Page, expected: ReadonlyArray<string>) => {
  await page.waitForFunction(
    (ids) => {
      // Runs in the page (this project's types have no DOM).
      const document = (globalThis as any).document
      const shown = [...document.querySelectorAll("tbody tr[data-run-id]")].map((tr: any) => tr.getAttribute("data-run-id"))
      return shown.length === ids.length && ids.every((id) => shown.includes(id))
    },
    expected,
    { timeout: bound }
  )
}

const waitForStatus = (page: Page, runId: string, status: string) =>
  page.waitForSelector(`tbody tr[data-run-id="${runId}"][data-status="${status}"]`, { timeout: bound })

describe.skipIf(!chromiumPresent && !required())("dashboard in headless Chromium", () => {
  const runtime = ManagedRuntime.make(server)
  let browser: Browser
  let page: Page
  let base: string
  let programs: Effect.Effect.Success<typeof fixtures>

  beforeAll(async () => {
    if (!chromiumPresent) throw new Error(`${executablePath} is missing, and CI requires the browser test`)
    const address = await runtime.runPromise(Effect.map(HttpServer.HttpServer, (s) => s.address))
    if (address._tag !== "TcpAddress") throw new Error("expected a TCP address")
    base = `http://127.0.0.1:${address.port}/`
    programs = await runtime.runPromise(fixtures)
    browser = await chromium.launch({
      executablePath,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic"]
    })
    page = await browser.newPage({ viewport: { width: 1360, height: 760 } })
    page.on("pageerror", (error) => console.error(`page error: ${error.message}`))
  })

  afterAll(async () => {
    await browser?.close()
    await runtime.dispose()
    for (const suffix of ["", "-wal", "-shm"]) rmSync(`${file}${suffix}`, { force: true })
  })

  it("lists the programs, filters, opens one, cancels and resumes, and follows changes made elsewhere", async () => {
    const all = Object.values(programs)
    await page.goto(base)
    await waitForRows(page, all)
    expect(await page.locator("h1").textContent()).toBe("Programs")
    const retryingRow = row(page, programs.retrying)
    expect(await retryingRow.getAttribute("data-status")).toBe("in_progress")
    expect(await retryingRow.locator("td").allTextContents()).toEqual([
      programs.retrying,
      "In progress",
      "enrich",
      "2/3",
      "3",
      "41 min",
      "rate limited (HTTP 429)"
    ])

    // Filters: each narrows the table through the API's own query parameters.
    await page.getByLabel("Status").selectOption("errored")
    await waitForRows(page, [programs.errored])
    await page.getByLabel("Status").selectOption("in_progress")
    await waitForRows(page, [programs.fresh, programs.retrying, programs.later])
    await page.getByLabel("Retries ≥").fill("1")
    await waitForRows(page, [programs.retrying])
    await page.getByLabel("Retries ≥").fill("")
    await page.getByLabel("Current job").fill("fetch_orders")
    await waitForRows(page, [programs.fresh, programs.later])
    await page.getByRole("button", { name: "Clear filters" }).click()
    await waitForRows(page, all)
    await page.getByLabel("Run ID").fill(programs.finished.slice(0, 8))
    await waitForRows(page, [programs.finished])
    expect(new URL(page.url()).searchParams.get("runId")).toBe(programs.finished.slice(0, 8))
    await page.getByRole("button", { name: "Clear filters" }).click()
    await waitForRows(page, all)

    // The detail of a program with retries: its jobs with the current one marked, its data, its error.
    await page.getByRole("button", { name: `Open program ${programs.retrying}` }).click()
    const detail = page.getByRole("region", { name: `Program ${programs.retrying}` })
    await detail.locator("li[aria-current=step]").waitFor({ timeout: bound })
    expect(await detail.locator("li[aria-current=step] .job-name").textContent()).toBe("enrich")
    expect(await detail.locator(".jobs li").count()).toBe(3)
    expect(JSON.parse(await detail.getByLabel("Program data").textContent() ?? "")).toEqual({ shop: 2 })
    expect(JSON.parse(await detail.getByLabel("Job data").textContent() ?? "")).toEqual({
      fetch_orders: { page: 12 }
    })
    expect(await detail.locator(".error-message").textContent()).toBe("rate limited (HTTP 429)")
    mkdirSync(dirname(artifact), { recursive: true })
    await page.screenshot({ path: artifact })
    if (process.env.PE_UPDATE_SCREENSHOT === "1") await page.screenshot({ path: readmeScreenshot })

    // Cancel: confirmed in the browser's dialog, then the row turns errored with the reason given.
    await detail.getByLabel("Reason (optional)").fill("stopped from the dashboard")
    page.once("dialog", (dialog) => void dialog.accept())
    await detail.getByRole("button", { name: "Cancel program" }).click()
    await waitForStatus(page, programs.retrying, "errored")
    expect(await retryingRow.locator("td.error").textContent()).toContain("stopped from the dashboard")
    await detail.getByRole("button", { name: "Resume program" }).waitFor({ timeout: bound })
    const stored = await runtime.runPromise(ProgramExecutor.get(programs.retrying))
    expect(stored._tag === "Some" && stored.value.erroredAt !== null).toBe(true)

    // Resume the program that failed: it is in progress again, at the step where it stopped.
    await page.getByRole("button", { name: `Open program ${programs.errored}` }).click()
    const erroredDetail = page.getByRole("region", { name: `Program ${programs.errored}` })
    await erroredDetail.getByRole("button", { name: "Resume program" }).click()
    await waitForStatus(page, programs.errored, "in_progress")
    expect(await erroredDetail.locator("li[aria-current=step] .job-name").textContent()).toBe("send_report")

    // A change made by another process (a worker finishing a program) shows without a reload.
    await runtime.runPromise(sql(`UPDATE ${table} SET finished_at = CURRENT_TIMESTAMP WHERE run_id = '${programs.later}'`))
    await waitForStatus(page, programs.later, "finished")
    expect(await rows(page).count()).toBe(all.length)
    await page.screenshot({ path: artifact })
  }, 120_000)
})
