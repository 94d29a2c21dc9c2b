/**
 * Poison mixed into a run: malformed messages on the queue (not JSON, no runId, wrong types, huge, binary) and rows
 * corrupted by hand with SQL (before the run and while it runs). The run completes: each corrupted program errors
 * with a message naming what cannot be read, the good programs finish, and no worker crashes.
 *
 * PostgreSQL's jsonb columns refuse text that is not JSON, so the corruption a hand-written UPDATE can leave there is
 * JSON of the wrong shape (a string where the job list belongs, an array for program_data, …); the test checks that
 * malformed text is refused by the column itself.
 */
import { afterEach, describe, expect, it } from "@effect/vitest"
import { serviceUrl } from "../../packages/core/test/utils/services.js"
import { type ExpectedError, printTable } from "./support/check.js"
import { jobNames } from "./support/hooks.js"
import { eventually, makeWorld, type World } from "./support/world.js"

const databaseUrl = serviceUrl("DATABASE_URL")
const amqpUrl = serviceUrl("AMQP_URL")
const describeWithServices = databaseUrl !== undefined && amqpUrl !== undefined ? describe : describe.skip
const programs = Number(process.env.PE_FAULT_PROGRAMS ?? 200) / 2

const malformedMessages = (runId: string): Array<Buffer> => [
  Buffer.from("not json at all"),
  Buffer.alloc(0),
  Buffer.from("{}"),
  Buffer.from(JSON.stringify({ step: 0 })),
  Buffer.from(JSON.stringify({ runId: 42, step: 0 })),
  Buffer.from(JSON.stringify({ runId, step: "0" })),
  Buffer.from(JSON.stringify({ runId, step: -1 })),
  Buffer.from(JSON.stringify({ runId, step: 1.5 })),
  Buffer.from(JSON.stringify([runId, 0])),
  Buffer.from("null"),
  Buffer.from([0xff, 0xfe, 0x00, 0x01, 0x7b]),
  Buffer.from(JSON.stringify({ runId: "x".repeat(1024 * 1024), step: 0 })),
  // Shapes no table can hold: a NUL (PostgreSQL refuses it in text), a step past int4, a runId past 64 characters.
  Buffer.from(JSON.stringify({ runId: `${runId}\u0000x`, step: 0 })),
  Buffer.from(JSON.stringify({ runId, step: 2 ** 31 })),
  Buffer.from(JSON.stringify({ runId: runId.padEnd(65, "x"), step: 0 })),
  Buffer.from(`{"runId":${JSON.stringify(runId)},"step":1e10}`)
]

/** A wake-up of the right shape for no program: the claim finds nothing and drops it without a log. */
const unknownProgram = Buffer.from(JSON.stringify({ runId: "no-such-program", step: 0 }))

const droppedLog = "malformed message acknowledged and dropped"

/** The `body` annotation the AMQP adapter logs with a dropped message (its first 200 characters). */
const loggedBody = (body: Buffer) => {
  const shown = body.subarray(0, 800).toString("utf8").slice(0, 200)
  return `  body: ${shown.length < body.length ? `${shown}…` : shown}`
}

/** Hand corruption, the message the program must error with, and the step it must error at. */
const corruptions: ReadonlyArray<{ readonly set: string; readonly error: ExpectedError }> = [
  { set: `jobs = '"job_1"'`, error: { message: "jobs is not a JSON array of job names", step: 0 } },
  { set: `jobs = '[1, 2]'`, error: { message: "jobs is not a JSON array of job names", step: 0 } },
  { set: `jobs = '{"0": "job_1"}'`, error: { message: "jobs is not a JSON array of job names", step: 0 } },
  { set: `jobs = 'null'`, error: { message: "jobs is not a JSON array of job names", step: 0 } },
  { set: `program_data = '[1, 2, 3]'`, error: { message: "program_data is not a JSON object", step: 0 } },
  // What a client that wrote JSON text into a text column and then migrated would leave: a string of broken JSON.
  { set: `program_data = to_jsonb('{"shop": 1'::text)`, error: { message: "program_data is not a JSON object", step: 0 } },
  { set: `job_data = '42'`, error: { message: "job_data is not a JSON object", step: 0 } },
  { set: `jobs = '["job_1", "no_such_job", "job_2"]'`, error: { message: `unknown job "no_such_job"`, step: 1 } },
  { set: `step = 7`, error: { message: "step 7 is past the last of 5 job(s)", step: 7, stepsRun: 0 } }
]

describeWithServices("poison", () => {
  let world: World | undefined
  afterEach(async () => {
    await world?.dispose()
    world = undefined
  })

  it(`${programs} programs with malformed messages and hand-corrupted rows mixed in: the rest finish`, async () => {
    world = await makeWorld({ databaseUrl: databaseUrl!, amqpUrl: amqpUrl!, prefix: "poison" })
    const current = world
    const runIds = await current.create(programs)
    const expectErrors = new Map<string, ExpectedError>()

    // Malformed text cannot get into a jsonb column at all.
    await expect(current.db.query(`UPDATE ${current.name} SET jobs = '["job_1", ' WHERE run_id = $1`, [runIds[0]]))
      .rejects.toThrow(/invalid input syntax for type json/)
    for (const [index, corruption] of corruptions.entries()) {
      const runId = runIds[index * 7]!
      await current.db.query(`UPDATE ${current.name} SET ${corruption.set} WHERE run_id = $1`, [runId])
      expectErrors.set(runId, corruption.error)
    }
    const sent = [...malformedMessages(runIds[1]!), ...malformedMessages(runIds[2]!)]
    await current.publishRaw([...malformedMessages(runIds[1]!), unknownProgram])

    const began = Date.now()
    const workers = [current.start(), current.start(), current.start()]
    const total = programs * jobNames.length

    // While the run goes on: more poison, and programs corrupted between two of their steps.
    const midRun = runIds.filter((runId) => !expectErrors.has(runId)).slice(-40)
    const corruptedMidRun = new Set<string>()
    await eventually("programs to corrupt mid-run are between steps", async () => {
      const { rows } = await current.db.query<{ run_id: string }>(
        `UPDATE ${current.name} SET program_data = '"corrupted mid-run"'
         WHERE run_id = ANY($1) AND step BETWEEN 1 AND 3 AND finished_at IS NULL AND errored_at IS NULL RETURNING run_id`,
        [midRun.filter((runId) => !corruptedMidRun.has(runId))]
      )
      for (const row of rows) corruptedMidRun.add(row.run_id)
      return corruptedMidRun.size >= 3 || (await current.stepsDone()) >= total * 0.9
    }, 120_000, current.logs)
    for (const runId of corruptedMidRun) expectErrors.set(runId, { message: "program_data is not a JSON object" })
    await current.publishRaw([...malformedMessages(runIds[2]!), unknownProgram])

    await eventually("every program finished or errored, no lease held", async () => (await current.unsettled()) === 0, 180_000, current.logs)
    await eventually("the poison is drained", async () => (await current.queueDepth()) === 0, 60_000, current.logs)
    // The poison's lines (a few KB a worker) are well inside the tail of each worker's output the world keeps.
    const logLines = () => workers.flatMap((worker) => worker.output.join("").split("\n"))
    const dropped = () => logLines().filter((line) => line.includes(droppedLog)).length
    const allLogged = async () => dropped() >= sent.length
    await eventually("every malformed message was logged as dropped", allLogged, 30_000, current.logs)
    const wallMillis = Date.now() - began
    const report = await current.check(runIds, { expectErrors })
    printTable([{
      scenario: "poison messages + corrupted rows",
      report,
      wallMillis,
      extra: `${corruptions.length} rows corrupted before, ${corruptedMidRun.size} during; ${sent.length} bad messages`
    }])
    expect(report.violations).toEqual([])
    expect(report.errored).toBe(expectErrors.size)
    expect(report.finished).toBe(programs - expectErrors.size)
    expect(corruptedMidRun.size).toBeGreaterThan(0)

    // No consumer died of the poison.
    for (const worker of workers) expect(worker.alive(), current.logs()).toBe(true)
    const { rows } = await current.db.query<{ error_message: string }>(
      `SELECT error_message FROM ${current.name} WHERE run_id = $1`,
      [runIds[0]]
    )
    expect(rows[0]!.error_message).toMatch(/^the stored program cannot be read: jobs is not a JSON array of job names/)
    for (const exit of await current.stop(workers)) expect(exit.code, current.logs()).toBe(0)

    // With the workers gone their logs are complete. Each malformed message was dropped at the edge exactly once (a
    // redelivered one would be logged again), and none reached the executor: a wake-up that did would be claimed
    // against the database, which refuses a NUL or a step past int4, and be logged as "poison wake-up dropped" or
    // returned to the queue.
    const lines = logLines()
    expect(dropped(), current.logs()).toBe(sent.length)
    const timesSent = new Map<string, number>()
    for (const body of sent) timesSent.set(loggedBody(body), (timesSent.get(loggedBody(body)) ?? 0) + 1)
    for (const [body, times] of timesSent) {
      expect(lines.filter((line) => line === body).length, `${body.slice(0, 200)}\n${current.logs()}`).toBe(times)
    }
    expect(lines.filter((line) => line.includes("poison wake-up dropped"))).toEqual([])
    expect(lines.filter((line) => line.includes("could not handle a wake-up"))).toEqual([])
  })
})
