/**
 * What `createProgram` stores must come back from every database as it went in. `JSON.stringify` changes some
 * values silently (drops `undefined` and functions, turns `NaN` into null and a `Date` into a string, a `Map` into
 * `{}`), and PostgreSQL's jsonb refuses NUL and unpaired surrogates that SQLite and MariaDB would store: each is
 * reported with its path and what to store instead, so the same input gets the same answer on every dialect.
 */

/** Deeper nesting is refused: it is not program data, and it would exhaust the stack of whoever reads it back. */
export const maxDepth = 256

const unpairedSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

const stringProblem = (text: string): string | undefined =>
  text.includes("\u0000")
    ? "a string containing NUL (\\u0000) cannot be stored (PostgreSQL refuses it); remove or escape it"
    : unpairedSurrogate.test(text)
    ? "a string with an unpaired UTF-16 surrogate is not valid Unicode; PostgreSQL refuses it"
    : undefined

const pathTo = (path: string, key: string | number): string =>
  typeof key === "number" ? `${path}[${key}]` : /^[A-Za-z_$][A-Za-z0-9_$]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key)}]`

const describeObject = (value: object): string | undefined => {
  if (value instanceof Date) return "a Date is not JSON; store date.toISOString()"
  if (value instanceof Map) return "a Map is not JSON; store Object.fromEntries(map)"
  if (value instanceof Set) return "a Set is not JSON; store [...set]"
  if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) return "binary data is not JSON; store it as base64"
  if (value instanceof RegExp) return "a RegExp is not JSON; store regexp.source"
  if (value instanceof Error) return "an Error is not JSON; store its message"
  const prototype = Object.getPrototypeOf(value)
  if (Array.isArray(value) || prototype === Object.prototype || prototype === null) return undefined
  const name = typeof prototype?.constructor === "function" && prototype.constructor.name !== ""
    ? prototype.constructor.name
    : "class"
  return `a ${name} instance is not JSON; store a plain object`
}

/** The first value under `value` that would not survive JSON unchanged, as `path: reason`; undefined if none. */
export const findProblem = (value: unknown, path: string): string | undefined => {
  const ancestors = new Set<object>()
  const visit = (current: unknown, at: string, depth: number): string | undefined => {
    switch (typeof current) {
      case "string": {
        const problem = stringProblem(current)
        return problem === undefined ? undefined : `${at}: ${problem}`
      }
      case "boolean":
        return undefined
      case "number":
        return Number.isFinite(current) ? undefined : `${at}: ${current} is not JSON; store a finite number, null or a string`
      case "undefined":
        return `${at}: undefined is not JSON; leave the key out or store null`
      case "bigint":
        return `${at}: a BigInt is not JSON; store it as a string`
      case "function":
        return `${at}: a function is not JSON`
      case "symbol":
        return `${at}: a symbol is not JSON`
    }
    if (current === null) return undefined
    const object = current as object
    const notJson = describeObject(object)
    if (notJson !== undefined) return `${at}: ${notJson}`
    if (ancestors.has(object)) return `${at}: a cycle (the value contains itself) is not JSON`
    if (depth >= maxDepth) return `${at}: nested deeper than ${maxDepth} levels`
    if (Object.getOwnPropertySymbols(object).length > 0) return `${at}: a symbol key is not JSON`
    ancestors.add(object)
    try {
      if (Array.isArray(object)) {
        for (let index = 0; index < object.length; index++) {
          if (!(index in object)) return `${pathTo(at, index)}: an empty array slot is not JSON; store null`
          const problem = visit(object[index], pathTo(at, index), depth + 1)
          if (problem !== undefined) return problem
        }
        return undefined
      }
      for (const key of Object.keys(object)) {
        const keyProblem = stringProblem(key)
        if (keyProblem !== undefined) return `${pathTo(at, key)}: the key: ${keyProblem}`
        const descriptor = Object.getOwnPropertyDescriptor(object, key)!
        if (descriptor.get !== undefined) return `${pathTo(at, key)}: a getter is not JSON; store its value`
        const problem = visit(descriptor.value, pathTo(at, key), depth + 1)
        if (problem !== undefined) return problem
      }
      return undefined
    } finally {
      ancestors.delete(object)
    }
  }
  return visit(value, path, 0)
}
