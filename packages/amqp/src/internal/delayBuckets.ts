/** RabbitMQ's largest per-queue message TTL (2^32 - 1 ms, about 49 days). */
export const maxDelayMillis = 4_294_967_295

/**
 * The TTL of the delay queue that carries a message delayed by `millis`: the next value of the 1-2-5 series
 * (1, 2, 5, 10, 20, 50, … ms) at or above it. Rounding up means never early (a wake-up that arrives before the
 * program's `next_run_at` would be dropped by the claim); the series keeps the order of magnitude (at most 2.5×
 * late) with about three queues per decade. 0 means no delay.
 */
export const delayBucket = (millis: number): number => {
  if (!(millis > 0)) return 0
  const wanted = Math.ceil(millis)
  if (wanted >= maxDelayMillis) return maxDelayMillis
  let decade = 1
  while (decade * 10 <= wanted) decade *= 10
  for (const step of [1, 2, 5, 10]) {
    if (step * decade >= wanted) return Math.min(step * decade, maxDelayMillis)
  }
  return maxDelayMillis
}

/**
 * An idle delay queue is deleted by the broker after this long (`x-expires`). Every delayed publish re-declares
 * its queue, which renews the lease, so a queue never expires while it still holds a message (its TTL is shorter).
 */
export const delayQueueExpiry = (bucket: number): number => Math.min(bucket * 2 + 60_000, maxDelayMillis)
