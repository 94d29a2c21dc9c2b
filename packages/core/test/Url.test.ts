import { describe, expect, it } from "@effect/vitest"
import { Url } from "@program-executor/core"

describe("Url.redact", () => {
  it("hides every form of password, by parsing the URL", () => {
    const cases: Array<[string, string, string]> = [
      ["postgres://u:p@ss@host/db", "p@ss", "postgres://u:***@host/db"],
      ["postgres://u@host/db?sslmode=disable&password=hunter2", "hunter2", "postgres://u@host/db?sslmode=disable&password=***"],
      ["postgres:///db?host=/run/pg&sslpassword=k3y", "k3y", "postgres:///db?host=%2Frun%2Fpg&sslpassword=***"],
      ["mysql://root:s3cret@127.0.0.1:3306/test", "s3cret", "mysql://root:***@127.0.0.1:3306/test"],
      ["mariadb://root:p%40ss%2Fw@db/test", "p%40ss", "mariadb://root:***@db/test"],
      ["amqps://guest:gu3st@rabbit:5671/vhost", "gu3st", "amqps://guest:***@rabbit:5671/vhost"],
      // A raw reserved character ends the authority early: host, port and path are then pieces of the password.
      ["amqp://guest:123/secret@rabbit", "secret", "amqp://*** (unparsable URL)"],
      ["amqp://guest:123?secret@rabbit", "secret", "amqp://*** (unparsable URL)"],
      ["amqp://guest:pa#secret@rabbit", "secret", "amqp://*** (unparsable URL)"],
      ["postgres://host/db#secret", "secret", "postgres://host/db#***"]
    ]
    for (const [url, secret, shown] of cases) {
      expect(Url.redact(url)).toBe(shown)
      expect(Url.redact(url)).not.toContain(secret)
    }
  })

  it("leaves URLs without secrets as they are", () => {
    for (const url of ["sqlite:./data/x.db", "sqlite::memory:", "file:///tmp/x.db", "amqp://127.0.0.1:5672"]) {
      expect(Url.redact(url)).toBe(url)
    }
  })
})
