/**
 * The dashboard, end to end: `ProgramsHttp.serve` over a real database, the page driven in Debian's headless Chromium
 * through playwright-core. Every wait is on the page's DOM and bounded, never on time.
 *
 * Without `/usr/bin/chromium` the suite is skipped loudly, and fails under CI (any non-empty `CI` but "false", or
 * `PE_REQUIRE_SERVICES=1`), like the suites that need a database or a broker; `.ci/run` installs it. The last screen
 * is kept in `reports/dashboard.png` (git-ignored); `PE_UPDATE_SCREENSHOT=1` also writes the README's
 * `docs/dashboard.png`.
 */
import { ProgramExecutor } from "@program-executor/core"
import { type Context, Effect, Exit, Redacted, Scope } from "effect"
import { existsSync, mkdirSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { type Browser, chromium, type Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { Backend } from "../../sql/test/utils.js"
import { type Server, startServer, targets } from "./support.js"

const executablePath = "/usr/bin/chromium"
const root = fileURLToPath(new URL("../../../", import.meta.url))
const reports = join(root, "reports")
const readmeScreenshot = join(root, "docs", "dashboard.png")

/** The same rule as the service URLs (packages/core/test/utils/services.ts): CI can never pass by skipping. */
const required = (process.env.CI !== undefined && process.env.CI !== "" && process.env.CI !== "false") ||
  process.env.PE_REQUIRE_SERVICES === "1"
const chromiumPresent = existsSync(executablePath)
if (!chromiumPresent && !required) {
  console.warn(`\n!!! ${executablePath} is missing: skipping the dashboard's browser test (apt-get install chromium)\n`)
}

/** How long the page may take to show an outcome: a poll period (2.5 s) on a slow shared machine. */
const bound = 15_000

const jobs = ["fetch_orders", "enrich", "send_report"]

/** `minutes` before the database's clock, in each dialect. */
const minutesAgo = (backend: Backend, minutes: number) =>
  backend === "pg"
    ? `now() - interval '${minutes} minutes'`
    : backend === "mysql"
    ? `NOW(3) - INTERVAL ${minutes} MINUTE`
    : `strftime('%Y-%m-%d %H:%M:%f', 'now', '-${minutes} minutes')`

const inMinutes = (backend: Backend, minutes: number) =>
  backend === "pg"
    ? `now() + interval '${minutes} minutes'`
    : backend === "mysql"
    ? `NOW(3) + INTERVAL ${minutes} MINUTE`
    : `strftime('%Y-%m-%d %H:%M:%f', 'now', '+${minutes} minutes')`

const now = (backend: Backend) => (backend === "mysql" ? "NOW(3)" : "CURRENT_TIMESTAMP")

/**
 * Programs in every state, as workers would have left them. No worker runs here: SQL stands in for them, the way
 * another process changes the table behind the server's back.
 */
const fixtures = (backend: Backend, server: Server) =>
  Effect.gen(function*() {
    const executor = yield* ProgramExecutor
    const create = (shop: number) =>
      executor.createProgram({ jobs, programData: { shop }, jobData: { fetch_orders: { page: 0 } } })
    const programs = {
      fresh: yield* create(1),
      retrying: yield* create(2),
      errored: yield* create(3),
      stuck: yield* create(4),
      finished: yield* create(5),
      later: yield* create(6)
    }
    const update = (runId: string, set: string, age: number) =>
      server.sql(
        `UPDATE ${server.table} SET ${set}${set === "" ? "" : ", "}created_at = ${minutesAgo(backend, age)} ` +
          `WHERE run_id = '${runId}'`
      )
    yield* update(programs.fresh, `locked_by = 'worker-7f3a:4312', locked_until = ${inMinutes(backend, 5)}`, 2)
    yield* update(
      programs.retrying,
      `step = 1, step_retry_count = 3, error_message = 'rate limited (HTTP 429)', ` +
        `job_data = '{"fetch_orders":{"page":12}}'`,
      41
    )
    yield* update(
      programs.errored,
      `step = 2, errored_at = ${now(backend)}, error_message = 'SMTP refused: mailbox unavailable'`,
      95
    )
    yield* update(programs.stuck, `errored_at = ${now(backend)}, error_message = 'orders API: 401 Unauthorized'`, 130)
    yield* update(programs.finished, `step = 2, finished_at = ${now(backend)}`, 180)
    yield* update(programs.later, "", 1)
    return programs
  })

const row = (page: Page, runId: string) => page.locator(`tbody tr[data-run-id="${runId}"]`)

/** Waits until the table shows exactly these run IDs, in any order. */
const waitForRows = (page: Page, expected: ReadonlyArray<string>) =>
  page.waitForFunction(
    (ids) => {
      // Runs in the page (this project's types have no DOM).
      const rows = (globalThis as any).document.querySelectorAll("tbody tr[data-run-id]")
      const shown = [...rows].map((tr: any) => tr.getAttribute("data-run-id"))
      return shown.length === ids.length && ids.every((id) => shown.includes(id))
    },
    expected,
    { timeout: bound }
  )

const waitForStatus = (page: Page, runId: string, status: string) =>
  page.waitForSelector(`tbody tr[data-run-id="${runId}"][data-status="${status}"]`, { timeout: bound })

const suite = (body: () => void) => {
  if (chromiumPresent) describe("dashboard in headless Chromium", body)
  else if (required) {
    describe("dashboard in headless Chromium", () => {
      it("finds Chromium", () => {
        throw new Error(`${executablePath} is missing, and CI requires the dashboard's browser test (apt-get install chromium)`)
      })
    })
  } else it.skip(`dashboard in headless Chromium (${executablePath} missing)`, () => {})
}

suite(() => {
  let browser: Browser

  beforeAll(async () => {
    browser = await chromium.launch({
      executablePath,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic"]
    })
  })
  afterAll(async () => {
    await browser?.close()
  })

  for (const target of targets()) {
    describe(`on ${target.backend}`, () => {
      const scope = Effect.runSync(Scope.make())
      let server: Server
      let context: Context.Context<ProgramExecutor>
      let programs: Effect.Effect.Success<ReturnType<typeof fixtures>>
      const run = <A, E>(effect: Effect.Effect<A, E, ProgramExecutor>) =>
        Effect.runPromise(Effect.provide(effect, context))

      beforeAll(async () => {
        const started = await Effect.runPromise(Scope.extend(startServer(target), scope))
        server = started.server
        context = started.context
        programs = await run(fixtures(target.backend, server))
      })
      afterAll(() => Effect.runPromise(Scope.close(scope, Exit.void)))

      it("lists programs, filters, opens one, cancels, resumes one and many, follows changes made elsewhere", async () => {
        const page = await browser.newPage({ viewport: { width: 1360, height: 760 } })
        const pageErrors: Array<string> = []
        page.on("pageerror", (error) => pageErrors.push(error.message))
        try {
          const all = Object.values(programs)
          await page.goto(`${server.base}/`)
          await waitForRows(page, all)
          expect(await page.locator("h1").textContent()).toBe("Programs")
          // Subscribed to the server's events.
          await page.locator(".live [role=status]", { hasText: "Live" }).waitFor({ timeout: bound })
          expect(await row(page, programs.retrying).locator("td").allTextContents()).toEqual([
            programs.retrying,
            "In progress",
            "enrich",
            "2/3",
            "3",
            "41 min",
            "rate limited (HTTP 429)"
          ])
          expect(await row(page, programs.finished).locator("td").nth(3).textContent()).toBe("3/3")

          // Each filter narrows the table through the API's query parameters, and is kept in the address.
          const status = page.getByLabel("Status")
          await status.selectOption("errored")
          await waitForRows(page, [programs.errored, programs.stuck])
          await status.selectOption("in_progress")
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

          // The detail of a running program shows its lease; then a program with retries: its jobs with the current
          // one marked, its data, its error.
          await page.getByRole("button", { name: `Open program ${programs.fresh}` }).click()
          const running = page.getByRole("region", { name: `Program ${programs.fresh}` })
          await running.locator(".lease code").waitFor({ timeout: bound })
          expect(await running.locator(".lease code").textContent()).toBe("worker-7f3a:4312")
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
          expect(await detail.locator(".lease").textContent()).toBe("none")
          if (process.env.PE_UPDATE_SCREENSHOT === "1" && target.backend === "sqlite") {
            await page.screenshot({ path: readmeScreenshot })
          }

          // Cancel, confirmed in the browser's dialog: the row turns errored, with the reason given.
          await detail.getByLabel("Reason (optional)").fill("stopped from the dashboard")
          page.once("dialog", (dialog) => void dialog.accept())
          await detail.getByRole("button", { name: "Cancel program" }).click()
          await waitForStatus(page, programs.retrying, "errored")
          expect(await row(page, programs.retrying).locator("td.error").textContent()).toContain(
            "stopped from the dashboard"
          )
          await detail.getByRole("button", { name: "Resume program" }).waitFor({ timeout: bound })
          const cancelled = await run(ProgramExecutor.get(programs.retrying))
          expect(cancelled._tag === "Some" && cancelled.value.erroredAt !== null).toBe(true)

          // Resume one: in progress again, at the step where it stopped.
          await page.getByRole("button", { name: `Open program ${programs.errored}` }).click()
          const erroredDetail = page.getByRole("region", { name: `Program ${programs.errored}` })
          await erroredDetail.getByRole("button", { name: "Resume program" }).click()
          await waitForStatus(page, programs.errored, "in_progress")
          expect(await erroredDetail.locator("li[aria-current=step] .job-name").textContent()).toBe("send_report")

          // Resume many: only the errored programs the filter shows (current job "enrich"), not the one elsewhere.
          await page.getByLabel("Current job").fill("enrich")
          await waitForRows(page, [programs.retrying])
          page.once("dialog", (dialog) => void dialog.accept())
          await page.getByRole("button", { name: "Resume all errored matching these filters" }).click()
          await waitForStatus(page, programs.retrying, "in_progress")
          await page.getByText("Resumed 1 program.").waitFor({ timeout: bound })
          await page.getByRole("button", { name: "Clear filters" }).click()
          await waitForRows(page, all)
          expect(await row(page, programs.stuck).getAttribute("data-status")).toBe("errored")

          // A change made by another process (a worker finishing a program) shows without a reload.
          await run(server.sql(`UPDATE ${server.table} SET finished_at = ${now(target.backend)} WHERE run_id = '${programs.later}'`))
          await waitForStatus(page, programs.later, "finished")
          expect(pageErrors).toEqual([])
        } finally {
          mkdirSync(reports, { recursive: true })
          await page.screenshot({ path: join(reports, `dashboard-${target.backend}.png`), fullPage: true })
          await page.close()
        }
      }, 120_000)
    })
  }

  describe("more programs than a page", () => {
    const scope = Effect.runSync(Scope.make())
    let server: Server
    let runIds: ReadonlyArray<string>

    beforeAll(async () => {
      const started = await Effect.runPromise(Scope.extend(startServer(targets()[0]!), scope))
      server = started.server
      runIds = await Effect.runPromise(Effect.provide(
        Effect.forEach(Array.from({ length: 52 }, (_, shop) => shop), (shop) =>
          ProgramExecutor.createProgram({ jobs, programData: { shop } })),
        started.context
      ))
    })
    afterAll(() => Effect.runPromise(Scope.close(scope, Exit.void)))

    it("shows the newest 50, loads the rest on demand, and keeps them through the next refresh", async () => {
      const page = await browser.newPage({ viewport: { width: 1360, height: 760 } })
      try {
        await page.goto(`${server.base}/`)
        await waitForRows(page, runIds.slice(2))
        expect(await page.locator(".count").textContent()).toBe("50+ programs")
        await page.getByRole("button", { name: "Load more" }).click()
        await waitForRows(page, runIds)
        expect(await page.locator(".count").textContent()).toBe("52 programs")
        expect(await page.getByRole("button", { name: "Load more" }).count()).toBe(0)
        // The next refresh (its time changes) reloads all 52, not the first page.
        const refreshed = await page.locator(".live time").getAttribute("datetime")
        await page.waitForFunction(
          (before) => (globalThis as any).document.querySelector(".live time")?.getAttribute("datetime") !== before,
          refreshed,
          { timeout: bound }
        )
        await waitForRows(page, runIds)
      } finally {
        await page.close()
      }
    }, 60_000)
  })

  describe("behind a token, read-only", () => {
    const scope = Effect.runSync(Scope.make())
    const token = "dashboard-token"
    let server: Server
    let runId: string

    beforeAll(async () => {
      const started = await Effect.runPromise(
        Scope.extend(startServer(targets()[0]!, { token: Redacted.make(token), readOnly: true }), scope)
      )
      server = started.server
      runId = await Effect.runPromise(
        Effect.provide(ProgramExecutor.createProgram({ jobs, programData: { shop: 7 } }), started.context)
      )
    })
    afterAll(() => Effect.runPromise(Scope.close(scope, Exit.void)))

    it("signs in at /login, then shows the programs and the server's refusal of a cancel", async () => {
      const page = await browser.newPage({ viewport: { width: 1360, height: 760 } })
      try {
        await page.goto(`${server.base}/`)
        expect(new URL(page.url()).pathname).toBe("/login")
        await page.getByLabel("Token").fill(token)
        await page.getByRole("button", { name: "Sign in" }).click()
        // The page, its module, htm's bundle, the API calls and the event stream all pass with the cookie.
        await waitForRows(page, [runId])
        await page.locator(".live [role=status]", { hasText: "Live" }).waitFor({ timeout: bound })
        await page.getByRole("button", { name: `Open program ${runId}` }).click()
        const detail = page.getByRole("region", { name: `Program ${runId}` })
        page.once("dialog", (dialog) => void dialog.accept())
        await detail.getByRole("button", { name: "Cancel program" }).click()
        await detail.getByText("this server is read-only (--read-only)").waitFor({ timeout: bound })
        expect(await row(page, runId).getAttribute("data-status")).toBe("in_progress")
      } finally {
        mkdirSync(reports, { recursive: true })
        await page.screenshot({ path: join(reports, "dashboard-read-only.png"), fullPage: true })
        await page.close()
      }
    }, 60_000)
  })
})
