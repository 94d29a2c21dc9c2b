// A job library written for @emartech/program-executor, unchanged: classes with a static `name`, `create` and
// `execute(message, jobDataHandler)`, collected in an object keyed by job name.

class RetryableError extends Error {
  constructor(message, code) {
    super()
    this.message = message
    this.code = code
    this.retryable = true
  }
}

export class ExportContactsJob {
  static get name() {
    return "export_contacts"
  }

  static create(programData) {
    return new ExportContactsJob(programData)
  }

  constructor(programData) {
    this.customerId = programData.customerId
  }

  async execute(message, jobDataHandler) {
    const { page = 0, pages = 3 } = await jobDataHandler.get()
    for (let current = page; current < pages; current++) {
      // ... export one page for this.customerId ...
      await jobDataHandler.checkpoint({ page: current + 1 }, 60_000)
    }
    await jobDataHandler.merge({ exportedFor: this.customerId, runId: message.runId })
  }
}

export class UploadJob {
  static get name() {
    return "upload_export"
  }

  static create() {
    return new UploadJob()
  }

  async execute(message, jobDataHandler) {
    const { attempts = 0 } = await jobDataHandler.get()
    await jobDataHandler.set({ attempts: attempts + 1 })
    if (attempts === 0) throw new RetryableError("storage returned 503", 503)
  }
}

export default {
  [ExportContactsJob.name]: ExportContactsJob,
  [UploadJob.name]: UploadJob
}
