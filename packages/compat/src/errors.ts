/**
 * The old library's error classes, constructed the same way (`new RetryableError(message, code)`). The executor
 * recognises them by their flags, as it does any error carrying `retryable: true` / `ignorable: true`.
 */
export class RetryableError extends Error {
  readonly retryable = true as const
  readonly code: unknown

  constructor(message?: string, code?: unknown) {
    super(message)
    this.name = "RetryableError"
    this.code = code
  }

  /** Marks any error as retryable, as the old library's `RetryableError.decorate` did. */
  static decorate<E extends object>(error: E): E & { retryable: true } {
    return Object.assign(error, { retryable: true as const })
  }
}

export class IgnorableError extends Error {
  readonly ignorable = true as const
  readonly code: unknown
  /** The old library put the code here as an HTTP-like status. */
  readonly response: { readonly status: unknown }

  constructor(message?: string, code?: unknown) {
    super(message)
    this.name = "IgnorableError"
    this.code = code
    this.response = { status: code }
  }

  static decorate<E extends object>(error: E): E & { ignorable: true } {
    return Object.assign(error, { ignorable: true as const })
  }
}
