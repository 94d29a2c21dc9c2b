/**
 * Deliveries are parsed by hand, the schema only consulted for what that parser refuses: the parser must never
 * accept what the schema rejects, and must return what the schema would.
 */
import { describe, expect, it } from "@effect/vitest"
import { Program } from "@program-executor/core"
import { Either, Schema } from "effect"
import { parseWakeUp } from "../src/internal/wakeUp.js"

const decode = Schema.decodeUnknownEither(Schema.parseJson(Program.WakeUp))

const bodies = [
  `{"runId":"r","step":0}`,
  `{"runId":"r","step":7,"extra":{"a":1}}`,
  `{"step":3,"runId":"0f8c2d1e-2b5a-4c7e-9a61-3f0e8d2b7c44"}`,
  `{"runId":"","step":1}`,
  `{"runId":"r","step":-0}`,
  `{"runId":"r","step":1e3}`,
  `{"runId":"r","step":9007199254740991}`,
  `{"runId":"r","step":9007199254740992}`,
  `{"runId":"r","step":-1}`,
  `{"runId":"r","step":1.5}`,
  // What no table can hold: a step past int4, a runId with NUL or longer than the column.
  `{"runId":"r","step":2147483647}`,
  `{"runId":"r","step":2147483648}`,
  `{"runId":"a\\u0000b","step":0}`,
  `{"runId":"${"x".repeat(64)}","step":0}`,
  `{"runId":"${"x".repeat(65)}","step":0}`,
  `{"runId":"r","step":"1"}`,
  `{"runId":"r","step":null}`,
  `{"runId":42,"step":0}`,
  `{"runId":null,"step":0}`,
  `{"runId":"r"}`,
  `{"step":0}`,
  `{"__proto__":{"runId":"r","step":0}}`,
  `{}`,
  `[]`,
  `["r",0]`,
  `null`,
  `0`,
  `"r"`,
  `{"runId":"r","step":0`,
  `not json at all`,
  ``
]

describe("parseWakeUp", () => {
  it("accepts exactly what the schema accepts, with the same result", () => {
    for (const body of bodies) {
      const decoded = decode(body)
      expect(parseWakeUp(body), body).toStrictEqual(Either.isRight(decoded) ? decoded.right : undefined)
    }
  })
})
