// The operators' dashboard: one ES module, no build step. Preact and htm come from the `htm` package's standalone
// bundle, served by the same server (no CDN), so the page works on a machine without internet.
import { html, render, useEffect, useRef, useState } from "./vendor/htm-preact.js"

const pageSize = 50
// The API's largest page: past it, narrowing the filters is the way to find a program.
const maxRows = 1000
// Polling every few seconds keeps the table fresh without load (see useLiveTick for the event stream beside it).
const pollEvery = 2500

const statusLabels = { in_progress: "In progress", errored: "Errored", finished: "Finished" }
const filterKeys = ["status", "retriesGte", "job", "runId"]

// ---------------------------------------------------------------------------------------------------------------
// API

class ApiError extends Error {
  constructor(status, message) {
    super(message)
    this.status = status
  }
}

// Relative URLs: the API sits beside the page, wherever the page is mounted.
const request = async (path, options = {}) => {
  const init = { credentials: "same-origin", headers: { accept: "application/json" } }
  if (options.body !== undefined) {
    init.method = "POST"
    // A JSON body (never a form) is what the server requires of a mutating request: no cross-site form post.
    init.headers["content-type"] = "application/json"
    init.body = JSON.stringify(options.body)
  }
  let response
  try {
    response = await fetch(path, init)
  } catch {
    throw new ApiError(0, "The server does not answer.")
  }
  const text = await response.text()
  let body = null
  try {
    body = text === "" ? null : JSON.parse(text)
  } catch {
    body = null
  }
  if (!response.ok) {
    // A 401 here means the sign-in cookie is gone: reloading leads to the sign-in page.
    const message = response.status === 401
      ? "Not signed in (any more): reload the page to sign in."
      : body && typeof body.message === "string"
      ? body.message
      : response.status === 403
      ? "The server refused this (read-only or not allowed)."
      : `The server answered ${response.status}.`
    throw new ApiError(response.status, message)
  }
  return body
}

const listUrl = (filters, options) => {
  const params = new URLSearchParams()
  for (const key of filterKeys) {
    const value = filters[key].trim()
    if (value !== "") params.set(key, value)
  }
  params.set("limit", String(options.limit))
  return `api/programs?${params}`
}

const programUrl = (runId) => `api/programs/${encodeURIComponent(runId)}`

// ---------------------------------------------------------------------------------------------------------------
// Formatting

const units = [["d", 86_400], ["h", 3600], ["min", 60], ["s", 1]]

const formatAge = (iso, now) => {
  const seconds = Math.max(0, Math.round((now - Date.parse(iso)) / 1000))
  for (const [unit, size] of units) {
    if (seconds >= size) return `${Math.floor(seconds / size)} ${unit}`
  }
  return "0 s"
}

const formatTime = (iso) => iso === null || iso === undefined ? "—" : new Date(iso).toLocaleString()

const formatJson = (value) => JSON.stringify(value, null, 2)

// Where the program stands, as "step/jobs" counted from 1; a finished program has done all of them.
const progress = (program) =>
  program.status === "finished"
    ? `${program.jobs.length}/${program.jobs.length}`
    : `${Math.min(program.step + 1, program.jobs.length)}/${program.jobs.length}`

// ---------------------------------------------------------------------------------------------------------------
// State kept in the address bar, so a filtered view or an open program can be shared and survives a reload.

const readLocation = () => {
  const params = new URLSearchParams(location.search)
  const filters = Object.fromEntries(filterKeys.map((key) => [key, params.get(key) ?? ""]))
  return { filters, selected: params.get("program") }
}

const writeLocation = (filters, selected) => {
  const params = new URLSearchParams()
  for (const key of filterKeys) if (filters[key].trim() !== "") params.set(key, filters[key].trim())
  if (selected !== null) params.set("program", selected)
  const search = params.toString()
  history.replaceState(null, "", search === "" ? location.pathname : `?${search}`)
}

// ---------------------------------------------------------------------------------------------------------------
// Live updates. The server's event stream (`api/events`) carries the events of its own process: programs created,
// cancelled or resumed through it, and steps of workers running inside it. Workers in other processes publish
// elsewhere, so polling goes on beside the stream; an event only brings the next refresh forward.

const eventTags = [
  "ProgramCreated",
  "StepStarted",
  "StepFinished",
  "RetryScheduled",
  "ProgramErrored",
  "ProgramFinished",
  "ProgramCancelled",
  "ProgramResumed"
]
// Under load events come by the thousand: at most one refresh per this many milliseconds is caused by them.
const eventRefreshDelay = 300

const useLiveTick = () => {
  const [tick, setTick] = useState(0)
  const [mode, setMode] = useState("polling")
  useEffect(() => {
    const bump = () => setTick((n) => n + 1)
    let pollTimer = null
    const poll = () => {
      pollTimer = setTimeout(() => {
        // A hidden tab does not poll; it refreshes when shown again.
        if (document.visibilityState === "visible") bump()
        poll()
      }, pollEvery)
    }
    poll()
    let eventTimer = null
    const onEvent = () => {
      if (eventTimer === null) eventTimer = setTimeout(() => { eventTimer = null; bump() }, eventRefreshDelay)
    }
    let source = null
    if (typeof EventSource === "function") {
      source = new EventSource("api/events")
      source.onopen = () => setMode("live")
      for (const tag of eventTags) source.addEventListener(tag, onEvent)
      source.onerror = () => {
        // An older server without the stream, or a dropped one: EventSource reconnects by itself; polling goes on.
        setMode(source.readyState === EventSource.OPEN ? "live" : "polling")
      }
    }
    const onVisible = () => document.visibilityState === "visible" && bump()
    document.addEventListener("visibilitychange", onVisible)
    return () => {
      clearTimeout(pollTimer)
      if (eventTimer !== null) clearTimeout(eventTimer)
      if (source !== null) source.close()
      document.removeEventListener("visibilitychange", onVisible)
    }
  }, [])
  return { tick, mode, refresh: () => setTick((n) => n + 1) }
}

// ---------------------------------------------------------------------------------------------------------------
// Components

const StatusBadge = ({ status }) =>
  html`<span class=${`badge badge-${status}`} data-status=${status}>${statusLabels[status] ?? status}</span>`

const Filters = ({ filters, onChange }) => {
  const set = (key) => (event) => onChange({ ...filters, [key]: event.currentTarget.value })
  return html`
    <form class="filters" role="search" aria-label="Filter programs" onSubmit=${(e) => e.preventDefault()}>
      <div class="field">
        <label for="filter-status">Status</label>
        <select id="filter-status" name="status" value=${filters.status} onChange=${set("status")}>
          <option value="">Any</option>
          <option value="in_progress">In progress</option>
          <option value="errored">Errored</option>
          <option value="finished">Finished</option>
        </select>
      </div>
      <div class="field">
        <label for="filter-retries">Retries ≥</label>
        <input id="filter-retries" name="retriesGte" type="number" min="0" step="1" inputmode="numeric"
          value=${filters.retriesGte} onInput=${set("retriesGte")} />
      </div>
      <div class="field">
        <label for="filter-job">Current job</label>
        <input id="filter-job" name="job" type="search" autocomplete="off" spellcheck="false"
          value=${filters.job} onInput=${set("job")} />
      </div>
      <div class="field field-wide">
        <label for="filter-run-id">Run ID</label>
        <input id="filter-run-id" name="runId" type="search" autocomplete="off" spellcheck="false"
          placeholder="starts with…" value=${filters.runId} onInput=${set("runId")} />
      </div>
      <button type="button" class="secondary"
        disabled=${filterKeys.every((key) => filters[key] === "")}
        onClick=${() => onChange(Object.fromEntries(filterKeys.map((key) => [key, ""])))}>Clear filters</button>
    </form>`
}

const ProgramsTable = ({ programs, selected, onSelect, now, loading }) => html`
  <table class="programs" aria-busy=${loading ? "true" : "false"}>
    <caption class="visually-hidden">Programs, newest first</caption>
    <thead>
      <tr>
        <th scope="col">Run ID</th>
        <th scope="col">Status</th>
        <th scope="col">Current job</th>
        <th scope="col" class="numeric">Step</th>
        <th scope="col" class="numeric">Retries</th>
        <th scope="col" class="numeric">Age</th>
        <th scope="col">Last error</th>
      </tr>
    </thead>
    <tbody>
      ${programs.map((program) => html`
        <tr key=${program.runId} data-run-id=${program.runId} data-status=${program.status}
          class=${program.runId === selected ? "selected" : ""}
          aria-current=${program.runId === selected ? "true" : undefined}>
          <td class="run-id">
            <button type="button" class="link" onClick=${() => onSelect(program.runId)}
              aria-label=${`Open program ${program.runId}`} title=${program.runId}>
              <code>${program.runId}</code>
            </button>
          </td>
          <td><${StatusBadge} status=${program.status} /></td>
          <td class="job">${program.currentJob ?? "—"}</td>
          <td class="numeric">${progress(program)}</td>
          <td class=${program.stepRetryCount > 0 ? "numeric warn" : "numeric"}>${program.stepRetryCount}</td>
          <td class="numeric"><time datetime=${program.createdAt} title=${formatTime(program.createdAt)}>
            ${formatAge(program.createdAt, now)}</time></td>
          <td class="error" title=${program.errorMessage ?? ""}>${program.errorMessage ?? ""}</td>
        </tr>`)}
    </tbody>
  </table>`

const JobList = ({ program }) => html`
  <ol class="jobs">
    ${program.jobs.map((job, index) => {
      const current = program.status !== "finished" && index === program.step
      const state = program.status === "finished" || index < program.step
        ? "done"
        : current
        ? (program.status === "errored" ? "stopped here" : "current")
        : "pending"
      return html`
        <li key=${index} class=${`job-${state.replace(" ", "-")}`} aria-current=${current ? "step" : undefined}>
          <span class="job-name">${job}</span> <span class="job-state">${state}</span>
        </li>`
    })}
  </ol>`

const Detail = ({ runId, tick, onClose, onChanged }) => {
  const [program, setProgram] = useState(null)
  const [error, setError] = useState(null)
  const [busy, setBusy] = useState(false)
  const [notice, setNotice] = useState(null)
  const [reason, setReason] = useState("")
  const heading = useRef(null)

  // Keyed by runId (see App), so a newly opened program starts empty: never the previous one's data under its title.
  useEffect(() => heading.current?.focus(), [])

  useEffect(() => {
    let current = true
    request(programUrl(runId)).then(
      (body) => current && (setProgram(body), setError(null)),
      (cause) => current && setError(cause)
    )
    return () => { current = false }
  }, [runId, tick])

  const act = async (action, body, done) => {
    setBusy(true)
    setNotice(null)
    try {
      const updated = await request(`${programUrl(runId)}/${action}`, { body })
      setProgram(updated)
      setError(null)
      setNotice({ kind: "ok", text: done })
      onChanged()
    } catch (cause) {
      setNotice({ kind: "error", text: cause.message })
    } finally {
      setBusy(false)
    }
  }

  const cancel = () => {
    if (!confirm(`Cancel program ${runId}? Its running job is interrupted at its next heartbeat.`)) return
    const trimmed = reason.trim()
    return act("cancel", trimmed === "" ? {} : { reason: trimmed }, "Cancelled.")
  }
  const resume = () => act("resume", {}, "Resumed: the step runs again.")

  return html`
    <section class="detail" aria-labelledby="detail-title" onKeyDown=${(e) => e.key === "Escape" && onClose()}>
      <header class="detail-header">
        <h2 id="detail-title" tabindex="-1" ref=${heading}>Program <code>${runId}</code></h2>
        <button type="button" class="secondary" onClick=${onClose} aria-label="Close program details">Close</button>
      </header>
      ${error !== null && html`<p class="alert" role="alert">${error.status === 404
        ? "No program has this run ID."
        : error.message}</p>`}
      ${program !== null && html`
        <dl class="facts">
          <dt>Status</dt><dd><${StatusBadge} status=${program.status} /></dd>
          <dt>Step</dt><dd>${progress(program)}${program.currentJob !== null && program.status !== "finished"
            ? html` · <code>${program.currentJob}</code>` : ""}</dd>
          <dt>Retries</dt><dd>${program.stepRetryCount}</dd>
          <dt>Created</dt><dd>${formatTime(program.createdAt)}</dd>
          <dt>Updated</dt><dd>${formatTime(program.updatedAt)}</dd>
          ${program.finishedAt !== null && html`<dt>Finished</dt><dd>${formatTime(program.finishedAt)}</dd>`}
          ${program.erroredAt !== null && html`<dt>Errored</dt><dd>${formatTime(program.erroredAt)}</dd>`}
          ${program.status === "in_progress" && html`<dt>Next run</dt><dd>${formatTime(program.nextRunAt)}</dd>`}
          <dt>Lease</dt>
          <dd class="lease">${program.lockedBy === null
            ? "none"
            : html`<code>${program.lockedBy}</code> until ${formatTime(program.lockedUntil)}`}</dd>
        </dl>

        ${program.corruption !== null && program.corruption !== undefined && html`
          <p class="alert" role="alert">Unreadable row: ${program.corruption}</p>`}

        <h3>Jobs</h3>
        <${JobList} program=${program} />

        ${program.errorMessage !== null && html`
          <h3>Error</h3>
          <pre class="error-message">${program.errorMessage}</pre>`}

        <h3>Program data</h3>
        <pre class="json" aria-label="Program data">${formatJson(program.programData)}</pre>
        <h3>Job data</h3>
        <pre class="json" aria-label="Job data">${formatJson(program.jobData)}</pre>

        <div class="actions">
          ${program.status === "in_progress" && html`
            <div class="field">
              <label for="cancel-reason">Reason (optional)</label>
              <input id="cancel-reason" type="text" value=${reason} onInput=${(e) => setReason(e.currentTarget.value)} />
            </div>
            <button type="button" class="danger" disabled=${busy} onClick=${cancel}>Cancel program</button>`}
          ${program.status === "errored" && html`
            <button type="button" class="primary" disabled=${busy} onClick=${resume}>Resume program</button>`}
        </div>`}
      <p class=${notice?.kind === "error" ? "notice notice-error" : "notice"} role="status">${notice?.text ?? ""}</p>
    </section>`
}

// "Resume all errored matching these filters", when the server has the bulk route (`POST api/programs/resume`):
// its OpenAPI document says so, read once.
const useBulkResume = () => {
  const [available, setAvailable] = useState(false)
  useEffect(() => {
    request("openapi.json").then(
      (document) => setAvailable(Boolean(document?.paths?.["/api/programs/resume"]?.post)),
      () => setAvailable(false)
    )
  }, [])
  return available
}

const BulkResume = ({ filters, onDone }) => {
  const [busy, setBusy] = useState(false)
  const [notice, setNotice] = useState(null)
  // Only errored programs are resumed: with another status chosen, the table shows none of them.
  if (filters.status !== "" && filters.status !== "errored") return null
  // The bulk filter has no retry count: resuming by it would touch programs the table does not show.
  const unsupported = filters.retriesGte.trim() !== ""
  const filter = {}
  const words = []
  if (filters.job.trim() !== "") {
    filter.job = filters.job.trim()
    words.push(`whose current job is ${filter.job}`)
  }
  if (filters.runId.trim() !== "") {
    filter.runIdPrefix = filters.runId.trim()
    words.push(`whose run ID starts with ${filter.runIdPrefix}`)
  }
  const run = async () => {
    const which = words.length === 0 ? "every errored program" : `every errored program ${words.join(" and ")}`
    if (!confirm(`Resume ${which}?`)) return
    setBusy(true)
    setNotice(null)
    try {
      const { count } = await request("api/programs/resume", { body: { filter } })
      setNotice({ kind: "ok", text: `Resumed ${count} program${count === 1 ? "" : "s"}.` })
      onDone()
    } catch (cause) {
      setNotice({ kind: "error", text: cause.message })
    } finally {
      setBusy(false)
    }
  }
  return html`
    <div class="bulk">
      <button type="button" class="secondary" disabled=${busy || unsupported} onClick=${run}
        aria-describedby=${unsupported ? "bulk-note" : undefined}>Resume all errored matching these filters</button>
      ${unsupported && html`<span id="bulk-note" class="note">Clear “Retries ≥” first: a bulk resume cannot select
        by retries.</span>`}
      <span class=${notice?.kind === "error" ? "notice notice-error" : "notice"} role="status">${notice?.text ?? ""}</span>
    </div>`
}

const App = () => {
  const initial = useRef(readLocation()).current
  const [filters, setFilters] = useState(initial.filters)
  const [selected, setSelected] = useState(initial.selected)
  const [programs, setPrograms] = useState([])
  const [nextAfter, setNextAfter] = useState(null)
  const [error, setError] = useState(null)
  const [loading, setLoading] = useState(true)
  const [updatedAt, setUpdatedAt] = useState(null)
  const { tick, mode, refresh } = useLiveTick()
  const bulkResume = useBulkResume()
  // How many rows the operator has loaded: a refresh reloads as many, so "Load more" survives live updates.
  const loaded = useRef(pageSize)
  // Only the answer to the latest request is shown: a slow answer for an older filter never overwrites a newer one.
  const generation = useRef(0)

  useEffect(() => writeLocation(filters, selected), [filters, selected])

  // A new filter starts from the first page.
  useEffect(() => { loaded.current = pageSize }, [filters])

  useEffect(() => {
    const mine = ++generation.current
    setLoading(true)
    // Typing in a text filter sends one request once the operator pauses, not one per key.
    const timer = setTimeout(() => {
      request(listUrl(filters, { limit: loaded.current })).then(
        (page) => {
          if (mine !== generation.current) return
          setPrograms(page.programs)
          setNextAfter(page.nextAfter)
          setError(null)
          setUpdatedAt(new Date())
          setLoading(false)
        },
        (cause) => {
          if (mine !== generation.current) return
          setError(cause)
          setLoading(false)
        }
      )
    }, tick === 0 ? 0 : 150)
    return () => clearTimeout(timer)
  }, [filters, tick])

  // "Load more" asks for a longer first page rather than the next one: every refresh then reloads all the rows shown,
  // in one request, and a row never shows twice or goes missing when programs are created between two pages.
  const loadMore = () => {
    loaded.current = Math.min(loaded.current + pageSize, maxRows)
    refresh()
  }

  const now = updatedAt?.getTime() ?? Date.now()

  // The status region holds the mode only: a screen reader is not told the time at every refresh.
  return html`
    <header class="top">
      <h1>Programs</h1>
      <p class="live">
        <span class=${`dot dot-${error !== null ? "down" : mode}`} aria-hidden="true"></span>
        <span role="status">${error !== null
          ? "Not updating"
          : mode === "live"
          ? "Live"
          : "Refreshing every few seconds"}</span>
        ${updatedAt !== null && html`<span>${" · updated "}<time datetime=${updatedAt.toISOString()}>
          ${updatedAt.toLocaleTimeString()}</time></span>`}
      </p>
    </header>
    <${Filters} filters=${filters} onChange=${setFilters} />
    ${error !== null && html`<p class="alert" role="alert">${error.message}</p>`}
    <main class=${selected === null ? "layout" : "layout with-detail"}>
      <section class="list" aria-label="Programs">
        <div class="list-bar">
          <p class="count" aria-live="polite">${loading && programs.length === 0
            ? "Loading…"
            : programs.length === 0
            ? "No program matches these filters."
            : `${programs.length}${nextAfter !== null ? "+" : ""} program${programs.length === 1 ? "" : "s"}`}</p>
          ${bulkResume && html`<${BulkResume} filters=${filters} onDone=${refresh} />`}
        </div>
        ${programs.length > 0 && html`
          <div class="table-scroll">
            <${ProgramsTable} programs=${programs} selected=${selected} onSelect=${setSelected} now=${now}
              loading=${loading} />
          </div>`}
        ${nextAfter !== null && (loaded.current < maxRows
          ? html`<button type="button" class="secondary load-more" onClick=${loadMore}>Load more</button>`
          : html`<p class="note">The first ${maxRows} programs are shown: narrow the filters to find others.</p>`)}
      </section>
      ${selected !== null && html`
        <${Detail} key=${selected} runId=${selected} tick=${tick} onClose=${() => setSelected(null)} onChanged=${refresh} />`}
    </main>`
}

render(html`<${App} />`, document.getElementById("app"))
