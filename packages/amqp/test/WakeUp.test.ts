/**
 * Deliveries are parsed by hand, the schema only consulted for what that parser refuses: the parser must never
 * accept what the schema rejects, and must return what the schema would.
 */
import { describe, expect, it } from "@effect/vitest"
import { Program } from "@program-executor/core"
import { Either, Schema } from "effect"
import { encodeWakeUp, parseWakeUp } from "../src/internal/wakeUp.js"

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
  ``,
  // A trace context is kept when it is a `traceparent`, dropped (the wake-up kept) when it is anything else.
  `{"runId":"r","step":1,"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}`,
  `{"runId":"r","step":1,"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"}`,
  `{"runId":"r","step":1,"traceparent":"00-00000000000000000000000000000000-b7ad6b7169203331-01"}`,
  `{"runId":"r","step":1,"traceparent":"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"}`,
  `{"runId":"r","step":1,"traceparent":"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"}`,
  `{"runId":"r","step":1,"traceparent":"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}`,
  `{"runId":"r","step":1,"traceparent":"garbage"}`,
  `{"runId":"r","step":1,"traceparent":42}`,
  `{"runId":"r","step":1,"traceparent":null}`,
  `{"runId":"r","step":1,"traceparent":{"a":1}}`,
  `{"runId":"","step":1,"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}`
]

describe("parseWakeUp", () => {
  it("accepts exactly what the schema accepts, with the same result", () => {
    for (const body of bodies) {
      const decoded = decode(body)
      expect(parseWakeUp(body), body).toStrictEqual(Either.isRight(decoded) ? decoded.right : undefined)
    }
  })

  it("keeps a valid traceparent and drops a malformed one, never refusing the wake-up for it", () => {
    const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    expect(parseWakeUp(`{"runId":"r","step":1,"traceparent":"${traceparent}"}`)).toStrictEqual({
      runId: "r",
      step: 1,
      traceparent
    })
    for (const malformed of [`"garbage"`, `42`, `null`, `"${traceparent.toUpperCase()}"`]) {
      expect(parseWakeUp(`{"runId":"r","step":1,"traceparent":${malformed}}`)).toStrictEqual({ runId: "r", step: 1 })
    }
  })
})

describe("encodeWakeUp", () => {
  it("writes a traceparent only when the wake-up has one, and reads back as written", () => {
    const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    expect(encodeWakeUp({ runId: "r", step: 2 }).toString("utf8")).toBe(`{"runId":"r","step":2}`)
    const body = encodeWakeUp({ runId: "r", step: 2, traceparent }).toString("utf8")
    expect(parseWakeUp(body)).toStrictEqual({ runId: "r", step: 2, traceparent })
  })
})
