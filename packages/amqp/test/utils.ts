/**
 * Test helpers: a raw amqplib channel to inspect what the adapter declared, unique queue names, and closing our own
 * connection from the broker's side (only ours: other suites share the broker).
 */
import * as amqp from "amqplib"
import { type Duration, Effect, Layer, Schedule } from "effect"
import { execFile } from "node:child_process"
import * as net from "node:net"
import { promisify } from "node:util"
import { ProgramRepository } from "@program-executor/core"
import { AmqpConnection, AmqpProgramQueue } from "@program-executor/amqp"

const run = promisify(execFile)

/** A raw channel for the test itself, closed with the scope. */
export const rawChannel = (url: string) =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const model = await amqp.connect(url, { noDelay: true })
      model.on("error", () => {})
      const channel = await model.createChannel()
      channel.on("error", () => {})
      return { model, channel }
    }),
    ({ model }) => Effect.promise(() => model.close().catch(() => {}))
  ).pipe(Effect.map(({ channel }) => channel))

/** Opens a throwaway channel: a failed passive declare closes the channel it ran on. */
export const inspectQueue = (url: string, queue: string) =>
  Effect.scoped(Effect.flatMap(rawChannel(url), (channel) =>
    Effect.tryPromise(() => channel.checkQueue(queue))))

export const deleteQueues = (url: string, queues: ReadonlyArray<string>) =>
  Effect.scoped(Effect.flatMap(rawChannel(url), (channel) =>
    Effect.forEach(queues, (queue) => Effect.promise(() => channel.deleteQueue(queue).catch(() => undefined)), {
      discard: true
    })))

/** The broker's id (Erlang pid) of the connection the adapter holds now, found by its local port. */
export const brokerConnectionId = Effect.gen(function*() {
  const connection = yield* AmqpConnection.AmqpConnection
  const { model } = yield* connection.connected
  const localPort = (model.connection as unknown as { stream: { localPort: number } }).stream.localPort
  const { stdout } = yield* Effect.promise(() => run("rabbitmqctl", ["-q", "list_connections", "pid", "peer_port"]))
  const pid = stdout.split("\n").map((line) => line.trim().split(/\s+/)).find(([, port]) => port === String(localPort))?.[0]
  if (pid === undefined) return yield* Effect.die(new Error(`no broker connection from local port ${localPort}`))
  return pid
})

/** Closes a connection from the broker's side, as a broker restart would (only ours: the broker is shared). */
export const closeConnection = (pid: string) =>
  Effect.promise(() => run("rabbitmqctl", ["-q", "close_connection", pid, "test"])).pipe(Effect.asVoid)

export const closeFromBroker = Effect.flatMap(brokerConnectionId, closeConnection)

/** RabbitMQ queue + in-memory repository for one test, its queues deleted afterwards. */
export const rabbitLayer = (url: string, options: AmqpProgramQueue.AmqpProgramQueueOptions & { readonly queueName: string }) => {
  const cleanup = Layer.scopedDiscard(
    Effect.addFinalizer(() =>
      deleteQueues(url, [options.queueName, ...[200, 500].map((ms) => AmqpProgramQueue.delayQueueName(options.queueName, ms))])
    )
  )
  return Layer.mergeAll(AmqpProgramQueue.layer(options), ProgramRepository.layerMemory).pipe(
    Layer.provideMerge(Layer.merge(AmqpConnection.layer({ url, connectionName: `test ${options.queueName}` }), cleanup))
  )
}

/** Polls `check` every 20 ms until it holds; dies after `within`. */
export const eventually = <E, R>(
  what: string,
  check: Effect.Effect<boolean, E, R>,
  within: Duration.DurationInput = "20 seconds"
) =>
  check.pipe(
    Effect.filterOrFail((ok) => ok, () => new Error(`not yet: ${what}`)),
    Effect.retry(Schedule.spaced("20 millis")),
    Effect.timeoutFail({ duration: within, onTimeout: () => new Error(`timed out waiting until ${what}`) }),
    Effect.orDie,
    Effect.asVoid
  )

/** A TCP proxy to the broker: lets a test have the broker unreachable, or cut live sockets without an AMQP close. */
export const makeProxy = (target: string) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const upstream = new URL(target)
      const sockets = new Set<net.Socket>()
      const server = net.createServer((client) => {
        const broker = net.connect(Number(upstream.port || 5672), upstream.hostname)
        sockets.add(client).add(broker)
        const end = () => {
          client.destroy()
          broker.destroy()
          sockets.delete(client)
          sockets.delete(broker)
        }
        for (const socket of [client, broker]) socket.on("error", end).on("close", end)
        client.pipe(broker).pipe(client)
      })
      return { server, sockets }
    }),
    ({ server, sockets }) =>
      Effect.async<void>((resume) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resume(Effect.void))
        if (!server.listening) resume(Effect.void)
      })
  ).pipe(Effect.map(({ server, sockets }) => ({
    /** Starts accepting on `port` (0: any free port); returns the port. */
    listen: (port: number) =>
      Effect.async<number>((resume) => {
        server.listen(port, "127.0.0.1", () => resume(Effect.succeed((server.address() as net.AddressInfo).port)))
      }),
    /** Destroys every open socket, as a network failure would: no AMQP close, no TCP FIN from the broker. */
    drop: Effect.sync(() => {
      for (const socket of sockets) socket.destroy()
    }),
    /** Stops forwarding on every open socket, connections kept: a broker that stalls and never answers. */
    stall: Effect.sync(() => {
      for (const socket of sockets) socket.pause()
    }),
    /** Forwards again what was held by `stall`. */
    unstall: Effect.sync(() => {
      for (const socket of sockets) socket.resume()
    })
  })))

/** A port nobody listens on (it was free a moment ago). */
export const freePort = Effect.async<number>((resume) => {
  const server = net.createServer()
  server.listen(0, "127.0.0.1", () => {
    const { port } = server.address() as net.AddressInfo
    server.close(() => resume(Effect.succeed(port)))
  })
})
