// The `program-executor` command end to end: the bin is spawned as a real process, against SQLite and PostgreSQL.
import { describe, expect, it } from "@effect/vitest"
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync, mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { serviceUrl } from "../../core/test/utils/services.js"

const bin = resolve(import.meta.dirname, "../bin/program-executor.js")
const fixtures = resolve(import.meta.dirname, "fixtures")

interface Result {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

const baseEnv = (): NodeJS.ProcessEnv => {
  const env = { ...process.env }
  for (const name of ["DATABASE_URL", "AMQP_URL", "PE_TABLE_NAME", "PE_QUEUE_NAME", "PE_DEBUG"]) delete env[name]
  return env
}

const start = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv, cwd: string) =>
  spawn(process.execPath, [bin, ...args], { cwd, env: { ...baseEnv(), ...env }, stdio: ["pipe", "pipe", "pipe"] })

const finished = (child: ChildProcess, input?: string) =>
  new Promise<Result>((done, fail) => {
    let stdout = ""
    let stderr = ""
    child.stdout!.on("data", (chunk) => (stdout += chunk))
    child.stderr!.on("data", (chunk) => (stderr += chunk))
    child.on("error", fail)
    child.on("close", (code) => done({ code, stdout, stderr }))
    child.stdin!.end(input ?? "")
  })

// Generous: each poll starts a process, and CI machines can be loaded.
const until = async <A>(what: string, f: () => Promise<A | undefined>, ms = 90_000): Promise<A> => {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    const value = await f()
    if (value !== undefined) return value
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
  throw new Error(`timed out waiting for ${what}`)
}

/** One line on stderr, no stack trace. */
const expectOneLineError = (result: Result, pattern: RegExp) => {
  expect(result.code).toBe(1)
  expect(result.stdout).toBe("")
  const lines = result.stderr.trim().split("\n")
  expect(lines, result.stderr).toHaveLength(1)
  expect(lines[0]).toMatch(/^program-executor: /)
  expect(lines[0]).toMatch(pattern)
}

const suite = (
  name: string,
  setup: () => { readonly env: NodeJS.ProcessEnv; readonly cwd: string },
  // Each command is a process start (seconds on a loaded machine): the backend-independent cases run on SQLite only.
  options: { readonly full: boolean }
) =>
  describe(name, () => {
    const { env, cwd } = setup()
    const cli = (args: ReadonlyArray<string>, input?: string) => finished(start(args, env, cwd), input)
    const show = async (runId: string) => {
      const result = await cli(["show", runId, "--json"])
      expect(result.code, result.stderr).toBe(0)
      return JSON.parse(result.stdout)
    }
    /** Every program by runId, in one process. */
    const all = async (): Promise<Map<string, any>> => {
      const result = await cli(["list", "--json", "--limit", "1000"])
      expect(result.code, result.stderr).toBe(0)
      return new Map(JSON.parse(result.stdout).map((program: { runId: string }) => [program.runId, program]))
    }

    it("creates, lists, shows, cancels and resumes programs; a worker runs them", { timeout: 240_000 }, async () => {
      expect((await cli(["migrate"])).code).toBe(0)
      const [fromArgs, fromFile, fromStdin, toCancel] = await Promise.all([
        cli(["create", "first", "second", "--program-data", '{"failOnce":true}', "--job-data", '{"first":{"n":1}}']),
        (() => {
          const file = join(mkdtempSync(join(tmpdir(), "pe-cli-")), "program.json")
          writeFileSync(file, JSON.stringify({ jobs: ["spawn"], programData: { from: "file" } }))
          return cli(["create", "--file", file, "--json"])
        })(),
        cli(["create", "--file", "-"], JSON.stringify({ jobs: ["boom", "second"] })),
        cli(["create", "first"])
      ])
      for (const result of [fromArgs, fromFile, fromStdin, toCancel]) expect(result.code, result.stderr).toBe(0)
      const retried = fromArgs.stdout.trim()
      const spawner = JSON.parse(fromFile.stdout).runId as string
      const broken = fromStdin.stdout.trim()
      const cancelled = toCancel.stdout.trim()
      expect(retried).toMatch(/^[0-9a-f-]{36}$/)

      const cancel = await cli(["cancel", cancelled, "--reason", "not needed"])
      expect(cancel.code, cancel.stderr).toBe(0)
      expect(await show(cancelled)).toMatchObject({ status: "errored", errorMessage: "not needed" })

      const listed = await cli(["list", "--json", "--limit", "500"])
      expect(listed.code, listed.stderr).toBe(0)
      const runIds = JSON.parse(listed.stdout).map((program: { runId: string }) => program.runId)
      expect(runIds).toEqual(expect.arrayContaining([retried, spawner, broken, cancelled]))

      const worker = start(["worker", "--jobs", join(fixtures, "jobs.ts"), "--concurrency", "4"], env, cwd)
      const workerDone = finished(worker)
      try {
        const done = await until("the programs to end", async () => {
          const programs = await all()
          const ours = [retried, spawner, broken].map((runId) => programs.get(runId))
          return ours.every((program) => program.status !== "in_progress") ? ours : undefined
        })
        expect(done[0]).toMatchObject({ status: "finished", jobData: { first: { n: 1, ranAt: 2 } } })
        expect(done[1]).toMatchObject({ status: "finished" })
        expect(done[2]).toMatchObject({ status: "errored", step: 0, errorMessage: "kaboom" })
        const child = await until("the child program", async () => {
          const program = (await all()).get(done[1].jobData.spawn.child)
          return program?.status === "finished" ? program : undefined
        })
        expect(child.programData).toEqual({ parent: spawner })

        const resumed = await cli(["resume", cancelled])
        expect(resumed.stdout).toContain(`resumed ${cancelled} at step 1/1`)
        await until("the resumed program", async () => (await show(cancelled)).status === "finished" ? true : undefined)

        const errored = await cli(["list", "--status", "errored", "--limit", "500"])
        expect(errored.stdout).toContain(broken)
        expect(errored.stdout).not.toContain(retried)
        expect(errored.stdout.split("\n")[0]).toMatch(/^ID\s+RUN ID\s+STATUS\s+STEP\s+RETRIES/)
      } finally {
        worker.kill("SIGTERM")
      }
      const stopped = await workerDone
      expect(stopped.code, stopped.stderr).toBe(0)
    })

    it.runIf(options.full)("runs an old-style job library (a default object of classes)", { timeout: 180_000 }, async () => {
      const created = await cli(["create", "first_job", "second_job", "third_job_not_there"])
      const runId = created.stdout.trim()
      const worker = start(["worker", "--jobs", join(fixtures, "seed-jobs.mjs"), "--skip-unknown-jobs"], env, cwd)
      const workerDone = finished(worker)
      try {
        const program = await until("the program", async () => {
          const found = await show(runId)
          return found.status === "in_progress" ? undefined : found
        })
        expect(program).toMatchObject({ status: "finished", jobData: { first_job: { count: 1, runId } } })
      } finally {
        worker.kill("SIGTERM")
      }
      expect((await workerDone).code).toBe(0)
    })

    it.runIf(options.full)("answers bad input with one line on stderr and exit code 1", { timeout: 120_000 }, async () => {
      const [badJson, unknownRunId, noJobs, badProgram, resumeRunning] = await Promise.all([
        cli(["create", "a", "--program-data", "{not json"]),
        cli(["show", "00000000-0000-0000-0000-000000000000"]),
        cli(["create"]),
        cli(["create", "a", "--job-data", '{"b":{}}']),
        cli(["create", "a"]).then((created) => cli(["resume", created.stdout.trim()]))
      ])
      expectOneLineError(badJson, /--program-data is not valid JSON/)
      expectOneLineError(unknownRunId, /no program with runId 00000000-0000-0000-0000-000000000000/)
      expectOneLineError(noJobs, /no jobs/)
      expectOneLineError(badProgram, /jobData has an entry for "b"/)
      expectOneLineError(resumeRunning, /only an errored program can be resumed/)
    })
  })

describe("program-executor", () => {
  it("--help lists the commands", { timeout: 60_000 }, async () => {
    const result = await finished(start(["--help"], {}, tmpdir()))
    expect(result.code).toBe(0)
    for (const command of ["worker", "create", "list", "show", "cancel", "resume", "migrate", "prune"]) {
      expect(result.stdout).toContain(`- ${command}`)
    }
  })

  it("reports an unreachable database in one line", { timeout: 60_000 }, async () => {
    const result = await finished(start(["list", "--database-url", "postgres://postgres@127.0.0.1:1/test"], {}, tmpdir()))
    expectOneLineError(result, /cannot open postgres:\/\/postgres@127\.0\.0\.1:1\/test .*ECONNREFUSED/)
  })

  it("never prints a password, whatever form the URL gives it in", { timeout: 60_000 }, async () => {
    const cwd = mkdtempSync(join(tmpdir(), "pe-cli-secrets-"))
    const forms = [
      { args: ["--database-url", "postgres://u:p@ssw0rd@127.0.0.1:1/test"], secret: "ssw0rd", shown: /postgres:\/\/u:\*\*\*@127/ },
      { args: ["--database-url", "postgres://u@127.0.0.1:1/test?password=hunter2"], secret: "hunter2", shown: /password=\*\*\*/ },
      { args: ["--database-url", "mysql://root:p@ssw0rd@127.0.0.1:1/test"], secret: "ssw0rd", shown: /mysql:\/\/root:\*\*\*@127/ },
      {
        args: ["--database-url", "sqlite:./x.db", "--amqp-url", "amqp://guest:12/s3cret@127.0.0.1:1"],
        secret: "s3cret",
        shown: /invalid AMQP URL amqp:\/\/\*\*\* .*percent-encoded/
      }
    ]
    const results = await Promise.all(forms.map(({ args }) => finished(start(["list", ...args], { PE_DEBUG: "1" }, cwd))))
    results.forEach((result, index) => {
      const { secret, shown } = forms[index]!
      expect(result.code, result.stderr).toBe(1)
      expect(result.stderr).toMatch(shown)
      expect(result.stdout + result.stderr).not.toContain(secret)
    })
  })

  // One process per command, on a machine that may be loaded: as few commands as cover each flag.
  it("create with a key, a delay or a file of many; list by job and data; bulk cancel and resume; prune", {
    timeout: 600_000
  }, async () => {
    const cwd = mkdtempSync(join(tmpdir(), "pe-cli-peers-"))
    const cli = (args: ReadonlyArray<string>) => finished(start(args, {}, cwd))
    const ok = async (args: ReadonlyArray<string>) => {
      const result = await cli(args)
      expect(result.code, result.stderr).toBe(0)
      return result.stdout.trim()
    }
    const keyed = await ok(["create", "a", "--idempotency-key", "order-1", "--start-after", "1h"])
    const file = join(cwd, "programs.json")
    writeFileSync(file, JSON.stringify([
      { jobs: ["a", "send_report"], programData: { shop: 1, tier: "gold" } },
      { jobs: ["send_report"], programData: { shop: 2 } },
      { jobs: ["b"], programData: { shop: 1 }, idempotencyKey: "order-1" }
    ]))
    const created = JSON.parse(await ok(["create", "--file", file, "--start-after", "2 hours", "--json"])).runIds
    expect(created).toHaveLength(3)
    expect(created[2]).toBe(keyed)
    const listed = JSON.parse(await ok(["list", "--job", "a", "--data", '{"shop":1}', "--json"]))
    expect(listed.map((program: { runId: string }) => program.runId)).toEqual([created[0]])
    expect(new Date(listed[0].nextRunAt).getTime()).toBeGreaterThan(Date.now() + 30 * 60_000)
    expect(await ok(["cancel", "--job", "send_report"])).toBe("cancelled 1 program")
    expect(await ok(["cancel", "--filter", '{"dataContains":{"shop":1}}', "--reason", "no"])).toBe("cancelled 1 program")
    expect(await ok(["resume", "--errored", "--job", "send_report"])).toBe("resumed 1 program")
    expect(JSON.parse(await ok(["prune", "--older-than", "0s", "--dry-run", "--json"]))).toEqual({
      finished: 0,
      errored: 1,
      dryRun: true
    })
    expect(await ok(["prune", "--older-than", "30d", "--errored-older-than", "0s"])).toBe(
      "deleted 0 finished and 1 errored programs"
    )
    expect(JSON.parse(await ok(["list", "--json"])).map((program: { runId: string }) => program.runId)).toEqual([
      created[1],
      keyed
    ])
    expectOneLineError(await cli(["cancel"]), /name a runId, or select programs/)
  })

  it("refuses an unknown flag after the job names with the usage line, creating nothing", { timeout: 60_000 }, async () => {
    const cwd = mkdtempSync(join(tmpdir(), "pe-cli-flags-"))
    const result = await finished(start(["create", "a", "b", "--idempotency-kee", "k"], {}, cwd))
    expect(result.code).toBe(1)
    expect(result.stdout).toBe("")
    expect(result.stderr).toContain("unknown option --idempotency-kee")
    expect(result.stderr).toMatch(/Usage: program-executor create .*<job>\.\.\./)
    expect(existsSync(join(cwd, "program-executor.db"))).toBe(false)
  })
})

suite("on the embedded SQLite default", () => ({ env: {}, cwd: mkdtempSync(join(tmpdir(), "pe-cli-sqlite-")) }), {
  full: true
})

const databaseUrl = serviceUrl("DATABASE_URL")
if (databaseUrl === undefined) describe.skip("on PostgreSQL (DATABASE_URL not set)", () => {})
else {
  suite("on PostgreSQL", () => ({
    env: { DATABASE_URL: databaseUrl, PE_TABLE_NAME: "cli_test_programs" },
    cwd: tmpdir()
  }), { full: false })
}
