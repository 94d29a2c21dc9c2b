/**
 * The seed-style library above, run unchanged through the Promise facade (no Effect in sight), on the embedded
 * SQLite file or on DATABASE_URL (+ AMQP_URL). Run: node --import tsx examples/seed-style/run.ts
 */
// In an application: import { ProgramExecutor } from "@program-executor/compat"
import { ProgramExecutor } from "@program-executor/compat"
import jobLibrary from "./jobs.mjs"

export const runSeedStyle = async (config: { databaseUrl?: string; amqpUrl?: string; filename?: string }) => {
  const executor = ProgramExecutor.create({
    ...config,
    tableName: "seed_style_programs",
    queueName: "seed-style-programs",
    retryDelayMs: 100 // the old library waited 1 s; the facade's default is the same
  })
  executor.on("programError", ({ message, error }) => console.log(`programError in ${message.jobs[0]}: ${error.message}`))
  try {
    await executor.processPrograms(jobLibrary)
    const runId = await executor.createProgram({
      jobs: ["export_contacts", "upload_export"],
      programData: { customerId: 42 },
      jobData: { export_contacts: { pages: 5 } }
    })
    for (;;) {
      const program = await executor.getProgram(runId)
      if (program !== undefined && (program.finishedAt !== null || program.erroredAt !== null)) return program
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  } finally {
    await executor.close()
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const env = process.env
  const program = await runSeedStyle({
    ...(env.DATABASE_URL ? { databaseUrl: env.DATABASE_URL } : { filename: "./seed-style.db" }),
    ...(env.AMQP_URL ? { amqpUrl: env.AMQP_URL } : {})
  })
  console.log(program.finishedAt ? "finished" : `errored: ${program.errorMessage}`, JSON.stringify(program.jobData))
}
