/** The job library shared by the producer and the workers of this example. */
import { Job, JobContext } from "@program-executor/core"
import { Effect } from "effect"

export const resize = Job.make("resize_image", Effect.gen(function*() {
  const ctx = yield* JobContext
  yield* Effect.sleep("20 millis") // stands in for real work
  yield* ctx.jobData.merge({ worker: process.pid })
}))

export const upload = Job.make("upload_image", Effect.sleep("10 millis"))

export const notify = Job.make("notify_owner", Effect.void)

export const jobs = [resize, upload, notify] as const
