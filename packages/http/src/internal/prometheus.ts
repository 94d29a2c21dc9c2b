/** The process's `effect/Metric` registry in the Prometheus text format (version 0.0.4). */
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import type * as MetricPair from "effect/MetricPair"
import * as MetricState from "effect/MetricState"
import * as Option from "effect/Option"

export interface Gauge {
  readonly name: string
  readonly help: string
  readonly value: number
  readonly labels?: Record<string, string>
}

const escapeLabel = (value: string) => value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, "\\\"")

const labels = (tags: ReadonlyArray<readonly [string, string]>) =>
  tags.length === 0 ? "" : `{${tags.map(([key, value]) => `${key}="${escapeLabel(value)}"`).join(",")}}`

const number = (value: number) =>
  Number.isNaN(value) ? "NaN" : value === Infinity ? "+Inf" : value === -Infinity ? "-Inf" : String(value)

const sanitize = (name: string) => name.replace(/[^a-zA-Z0-9_:]/g, "_")

/** Counters keep their names (ours already end in `_total`, as Prometheus wants); one HELP/TYPE block per name. */
const render = (pairs: ReadonlyArray<MetricPair.MetricPair.Untyped>): string => {
  const blocks = new Map<string, { type: string; help: string; lines: Array<string> }>()
  const block = (name: string, type: string, help: string | undefined) => {
    let found = blocks.get(name)
    if (found === undefined) {
      found = { type, help: help ?? name, lines: [] }
      blocks.set(name, found)
    }
    return found.lines
  }
  for (const pair of pairs) {
    const key = pair.metricKey
    const description = Option.getOrUndefined(key.description)
    const name = sanitize(key.name)
    const tags = key.tags.map((tag) => [tag.key, tag.value] as const)
    const state = pair.metricState
    if (MetricState.isCounterState(state)) {
      const counterName = name.endsWith("_total") ? name : `${name}_total`
      block(counterName, "counter", description).push(`${counterName}${labels(tags)} ${number(Number(state.count))}`)
    } else if (MetricState.isGaugeState(state)) {
      block(name, "gauge", description).push(`${name}${labels(tags)} ${number(Number(state.value))}`)
    } else if (MetricState.isHistogramState(state)) {
      const lines = block(name, "histogram", description)
      let infinite = false
      for (const [bound, count] of state.buckets) {
        if (bound === Infinity) infinite = true
        lines.push(`${name}_bucket${labels([...tags, ["le", number(bound)]])} ${count}`)
      }
      if (!infinite) lines.push(`${name}_bucket${labels([...tags, ["le", "+Inf"]])} ${state.count}`)
      lines.push(`${name}_sum${labels(tags)} ${number(state.sum)}`)
      lines.push(`${name}_count${labels(tags)} ${state.count}`)
    }
  }
  return [...blocks].map(([name, { help, lines, type }]) =>
    `# HELP ${name} ${help.replace(/\n/g, " ")}\n# TYPE ${name} ${type}\n${lines.join("\n")}\n`
  ).join("")
}

const renderGauges = (gauges: ReadonlyArray<Gauge>) => {
  const byName = new Map<string, Array<Gauge>>()
  for (const gauge of gauges) byName.set(gauge.name, [...(byName.get(gauge.name) ?? []), gauge])
  return [...byName].map(([name, all]) =>
    `# HELP ${name} ${all[0]!.help}\n# TYPE ${name} gauge\n` +
    all.map((gauge) => `${name}${labels(Object.entries(gauge.labels ?? {}))} ${number(gauge.value)}`).join("\n") + "\n"
  ).join("")
}

/** The registry's counters and histograms, then the given gauges. */
export const exposition = (gauges: ReadonlyArray<Gauge>) =>
  Effect.map(Metric.snapshot, (pairs) => render(pairs) + renderGauges(gauges))
