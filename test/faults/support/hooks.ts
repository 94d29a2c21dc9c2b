/** The jobs of the fault scenarios (the worker is `test/support/worker.ts`, given them in `PE_JOBS`). */

export const jobNames = ["job_1", "job_2", "job_3", "job_4", "job_5"]
