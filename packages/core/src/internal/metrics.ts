import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"

export const programsCreated = Metric.counter("program_executor_programs_created_total", { incremental: true })
export const programsFinished = Metric.counter("program_executor_programs_finished_total", { incremental: true })
export const programsErrored = Metric.counter("program_executor_programs_errored_total", { incremental: true })
export const programsCancelled = Metric.counter("program_executor_programs_cancelled_total", { incremental: true })
export const stepsRetried = Metric.counter("program_executor_steps_retried_total", { incremental: true })
export const stepsCompleted = Metric.counter("program_executor_steps_completed_total", { incremental: true })
/** Steps claimed by continuation (advanced and claimed in one statement by the worker that ran the step before). */
export const stepsContinued = Metric.counter("program_executor_steps_continued_total", { incremental: true })
/** Wake-ups that did not run a step: duplicates, stale or cancelled programs. */
export const wakeUpsDropped = Metric.counter("program_executor_wakeups_dropped_total", { incremental: true })
export const stepsRecovered = Metric.counter("program_executor_sweeper_republished_total", { incremental: true })
/** Wake-ups that can never run: malformed, naming what no table can hold, or refused by the database for their data. */
export const wakeUpsPoisoned = Metric.counter("program_executor_wakeups_poisoned_total", { incremental: true })
/** Steps whose lease expired without an outcome (their worker died), re-published at once. */
export const leasesRecovered = Metric.counter("program_executor_expired_leases_recovered_total", { incremental: true })
export const jobDuration = Metric.histogram(
  "program_executor_job_duration_seconds",
  MetricBoundaries.exponential({ start: 0.001, factor: 4, count: 10 })
)
/** Time from a step becoming due to a worker starting it. */
export const queueLag = Metric.histogram(
  "program_executor_queue_lag_seconds",
  MetricBoundaries.exponential({ start: 0.001, factor: 4, count: 10 })
)
