import type pg from "pg"

/** Creates the table `test/support/worker.ts` records every job run in (`PE_EXECUTIONS_TABLE`). */
export const createExecutionsTable = (db: pg.Pool, table: string) =>
  db.query(`CREATE TABLE ${table} (
    id serial PRIMARY KEY, run_id text NOT NULL, step int NOT NULL, attempt int NOT NULL, pid int NOT NULL,
    job text NOT NULL, started_at timestamptz NOT NULL, finished_at timestamptz)`)
