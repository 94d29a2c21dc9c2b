/**
 * Connection URLs as they may be shown in logs, errors, spans and CLI output. Every adapter prints URLs through
 * `redact`, so one definition decides what a password looks like on screen: `***`.
 */

/** Query parameters that carry secrets: `pg` reads `?password=…` (and `sslpassword`, `sslkey`) as connection options. */
const secretParameter = /pass|pwd|secret|token|key|auth|cred/i

const scheme = (url: string): string | undefined => /^([a-z][a-z0-9+.-]*):/i.exec(url)?.[1]

/**
 * Whether `url` parses with the credentials where a driver will look for them. A raw `@` after the authority means a
 * reserved character (`/`, `?`, `#`) in the password ended the authority early: the "host", "port" and path are then
 * pieces of the password, so no part of such a URL can be shown.
 */
export const parseSafely = (url: string): URL | undefined => {
  if (!URL.canParse(url)) return undefined
  const parsed = new URL(url)
  return `${parsed.pathname}${parsed.search}${parsed.hash}`.includes("@") ? undefined : parsed
}

/**
 * The URL with its password, secret query parameters and fragment replaced by `***`. It is parsed, not matched with
 * a pattern: `postgres://u:p@ss@host/db` hides all of `p@ss`, `?password=…` is hidden too. A URL that cannot be
 * parsed safely shows its scheme only.
 */
export const redact = (url: string): string => {
  const trimmed = url.trim()
  const parsed = parseSafely(trimmed)
  if (parsed === undefined) {
    const name = scheme(trimmed)
    return name === undefined ? "(unparsable URL)" : `${name}://*** (unparsable URL)`
  }
  // A URL without an authority (`sqlite:PATH`, `file:PATH`) has nowhere to hold a password outside its query.
  const authority = parsed.host !== "" || trimmed.slice(parsed.protocol.length).startsWith("//")
  const credentials = parsed.username === "" && parsed.password === ""
    ? ""
    : `${parsed.username}${parsed.password === "" ? "" : ":***"}@`
  const params = new URLSearchParams(parsed.search)
  for (const key of new Set(params.keys())) {
    if (secretParameter.test(key)) params.set(key, "***")
  }
  const search = params.size === 0 ? "" : `?${params.toString()}`
  const hash = parsed.hash === "" ? "" : "#***"
  return `${parsed.protocol}${authority ? `//${credentials}${parsed.host}` : ""}${parsed.pathname}${search}${hash}`
}
