/**
 * A loopback TCP proxy in front of PostgreSQL that can drop a connection right after a statement went through: the
 * "ambiguous write", where the server commits and the client only sees its connection die.
 *
 * After the matching chunk, the proxy keeps forwarding that connection's client→server bytes (the rest of the
 * batch: pg corks Parse/Bind/Execute/Sync into one write, but TCP may still split it, and an implicit transaction
 * commits only on Sync) and swallows every server→client byte. It destroys both sockets once the server's first reply
 * arrives: PostgreSQL flushes its output at ReadyForQuery (or when its buffer fills), after an autocommit statement
 * committed. Destroying the server side as soon as the bytes were written would race the server's read: a reset can
 * reach it before it ran the statement, and an open transaction is rolled back when its connection drops (tried: a
 * named statement's UPDATE, cut that way, was lost in 2 runs of 3; a simple-protocol UPDATE survived).
 */
import { connect, createServer, type Socket } from "node:net"

export interface CuttingProxy {
  readonly port: number
  /** `targetUrl` with its host and port replaced by the proxy's. */
  readonly url: string
  /**
   * The next client→server chunk for which `match` is true is forwarded (with whatever else the client sends on that
   * connection), then both sockets of that connection are destroyed before any reply reaches the client. Resolves
   * once that happened. One cut may be pending at a time.
   */
  cutAfter(match: (chunk: Buffer) => boolean): Promise<void>
  /** How many connections were cut. */
  readonly cuts: number
  /** How many connections are open through the proxy. */
  readonly connections: number
  close(): Promise<void>
}

export interface CuttingProxyOptions {
  /** The longest wait for the server's reply before cutting anyway (a statement that blocks on a lock). */
  readonly replyTimeoutMillis?: number
}

interface PendingCut {
  readonly match: (chunk: Buffer) => boolean
  readonly resolve: () => void
  readonly reject: (error: Error) => void
}

export const makeCuttingProxy = async (targetUrl: string, options: CuttingProxyOptions = {}): Promise<CuttingProxy> => {
  const target = new URL(targetUrl)
  const targetHost = target.hostname === "" || target.hostname === "localhost" ? "127.0.0.1" : target.hostname
  const targetPort = target.port === "" ? 5432 : Number(target.port)
  const replyTimeoutMillis = options.replyTimeoutMillis ?? 2_000
  const sockets = new Set<Socket>()
  let pending: PendingCut | undefined
  let cuts = 0
  let connections = 0

  const server = createServer((client) => {
    const upstream = connect(targetPort, targetHost)
    connections++
    for (const socket of [client, upstream]) {
      socket.setNoDelay(true)
      sockets.add(socket)
      socket.on("error", () => {})
    }
    let cut: PendingCut | undefined
    let done = false
    const finish = () => {
      if (done) return
      done = true
      client.destroy()
      upstream.destroy()
      cuts++
      cut?.resolve()
    }
    client.on("data", (chunk: Buffer) => {
      upstream.write(chunk)
      if (cut !== undefined || pending === undefined || !pending.match(chunk)) return
      cut = pending
      pending = undefined
      // Bounded: a statement that blocks never replies, and the cut must still happen.
      const timer = setTimeout(finish, replyTimeoutMillis)
      upstream.once("data", () => {
        clearTimeout(timer)
        finish()
      })
    })
    upstream.on("data", (chunk: Buffer) => {
      if (cut === undefined) client.write(chunk)
    })
    let closed = false
    const close = () => {
      if (closed) return
      closed = true
      connections--
      sockets.delete(client)
      sockets.delete(upstream)
      client.destroy()
      upstream.destroy()
    }
    client.on("close", close)
    upstream.on("close", close)
  })

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => resolve())
  })
  const address = server.address()
  if (typeof address !== "object" || address === null) throw new Error("the proxy has no TCP address")
  const proxied = new URL(targetUrl)
  proxied.hostname = "127.0.0.1"
  proxied.port = String(address.port)

  return {
    port: address.port,
    url: proxied.toString(),
    cutAfter: (match) =>
      new Promise<void>((resolve, reject) => {
        if (pending !== undefined) return reject(new Error("a cut is already pending"))
        pending = { match, resolve, reject }
      }),
    get cuts() {
      return cuts
    },
    get connections() {
      return connections
    },
    close: () =>
      new Promise<void>((resolve) => {
        pending?.reject(new Error("the proxy closed before the cut"))
        pending = undefined
        for (const socket of sockets) socket.destroy()
        server.close(() => resolve())
      })
  }
}
