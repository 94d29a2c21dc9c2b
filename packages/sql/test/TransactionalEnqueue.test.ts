/** Transactional enqueue with the SQL queue, on SQLite, PostgreSQL and MariaDB (see the suite). */
import { describe } from "@effect/vitest"
import { describeWithService } from "../../core/test/utils/services.js"
import { SqlProgramQueue } from "../src/index.js"
import { transactionalEnqueueSuite } from "./support/transactionalEnqueue.js"

// The poll is set to minutes: a program found at once was woken after the commit.
const sqlQueue = (namespace: string) => SqlProgramQueue.layer({ tableName: namespace, pollInterval: "5 minutes" })

describe("transactional enqueue, SQL queue, SQLite", () => transactionalEnqueueSuite("sqlite", undefined, sqlQueue))
describeWithService("DATABASE_URL", "transactional enqueue, SQL queue, PostgreSQL", (url) =>
  transactionalEnqueueSuite("pg", url, sqlQueue))
describeWithService("MYSQL_URL", "transactional enqueue, SQL queue, MariaDB", (url) =>
  transactionalEnqueueSuite("mysql", url, sqlQueue))
