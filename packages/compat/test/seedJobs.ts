// A job library written for the old library, unchanged: classes with static create / execute, keyed by job name.
import { IgnorableError, RetryableError } from "@program-executor/compat"

export const runs: Array<string> = []

export class FirstJob {
  static get name() {
    return "first_job"
  }
  static create(programData: Record<string, unknown>) {
    return new FirstJob(programData)
  }
  constructor(readonly programData: Record<string, unknown>) {}
  async execute(message: { runId: string; jobs: ReadonlyArray<string> }, jobDataHandler: any) {
    runs.push(`first_job:${message.runId}`)
    const data = await jobDataHandler.get()
    await jobDataHandler.merge({ seen: (data.seen ?? 0) + 1, firstOfRest: message.jobs[0] })
  }
}

export class FlakyJob {
  static create() {
    return new FlakyJob()
  }
  async execute(_message: unknown, jobDataHandler: any) {
    const { failures = 0 } = await jobDataHandler.get()
    if (failures < 2) {
      await jobDataHandler.set({ failures: failures + 1 })
      throw new RetryableError("remote service unavailable", 503)
    }
  }
}

export class BrokenJob {
  static create() {
    return new BrokenJob()
  }
  async execute() {
    throw new Error("this job is broken")
  }
}

export class IgnoredJob {
  static create() {
    return new IgnoredJob()
  }
  async execute() {
    throw new IgnorableError("nothing to do for this customer", 404)
  }
}

export const jobLibrary = {
  [FirstJob.name]: FirstJob,
  flaky_job: FlakyJob,
  broken_job: BrokenJob,
  ignored_job: IgnoredJob
}
