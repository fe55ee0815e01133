// What moving bytes between two processes over TLS costs on this machine, measured in the same run as the
// snapshot benchmark, so the transport's share of a snapshot through the control plane is a figure rather than a
// guess. Two runs on loopback, each a sender and a receiver in processes of their own (so each side's CPU is its
// own, from process.cpuUsage):
// - `tls`: a bare TLS 1.3 socket, 1 MiB writes: the least any encrypted transport between two Node processes
//   costs;
// - `grpc`: a grpc-js client-streaming call of 1 MiB messages over TLS, sent as the agent sends chunks (its
//   flow-control windows, in-place framing from grpc-framing.ts, a few reused buffers), received as the control
//   plane receives them (messages assembled in pooled memory, pooled-receiving.ts), without protobuf or the
//   snapshot protocol.
// On the dev VM the sender's side of gRPC came within ~0.2 CPU-s a GiB of bare TLS, and receiving cost two to three
// times sending either way: TLS records are at most 16 KiB, so a receiver decrypts and hands JavaScript the bytes
// in pieces of 16 KiB or less (HTTP/2 data arrives in ~8 KiB pieces whatever frame size is advertised).
import { type ChildProcess, fork } from "node:child_process";
import tls from "node:tls";
import { installInPlaceFraming, selfSignedPair } from "@dumont/host-agent";
import {
  FLOW_CONTROL_WINDOW_BYTES,
  FRAME_HEADER_BYTES,
  installPooledReceiving,
  MAX_MESSAGE_BYTES,
  markFrameHeadroom,
  RETRY_BUFFER_BYTES,
  releaseReceivedMessage,
  widenFlowControlWindows,
} from "@dumont/proto";
import * as grpc from "@grpc/grpc-js";

export interface TransportSide {
  /** CPU seconds (user + system, the whole process) per GiB moved. */
  cpuSecondsPerGiB: number;
}

export interface TransportRun {
  /** Wall-clock MB/s from the sender's first write to the receiver's last byte. */
  MBps: number;
  send: TransportSide;
  receive: TransportSide;
}

export interface TransportCost {
  bytes: number;
  tls: TransportRun;
  grpc: TransportRun;
}

type Kind = "tls" | "grpc";
interface Material {
  certPem: string;
  keyPem: string;
}
/** What the parent sends a child to start it. */
interface Start {
  role: "receive" | "send";
  kind: Kind;
  bytes: number;
  material: Material;
  port?: number;
}
/** What a child answers: a receiver its port, then each side its CPU. */
type Answer = { port: number } | { cpuSeconds: number; at: number };

const MiB = 1024 * 1024;
const ROLE_ENV = "DUMONT_BENCH_TRANSPORT";
const METHOD = "/dumont.bench.Transport/Push";
const bytesCodec = { serialize: (b: Buffer) => b, deserialize: (b: Buffer) => b };

/**
 * Measures both transports in child processes of this module, each twice (~12 s for the default 1 GiB), and
 * reports each one's cheaper run: what else the machine does only ever adds to a run's CPU.
 */
export async function measureTransport(bytes = 1024 * MiB): Promise<TransportCost> {
  const material = await selfSignedPair({ dnsName: "localhost" });
  const best = async (kind: Kind): Promise<TransportRun> => {
    const [a, b] = [await measure(kind, bytes, material), await measure(kind, bytes, material)];
    const cost = (r: TransportRun) => r.send.cpuSecondsPerGiB + r.receive.cpuSecondsPerGiB;
    return cost(a) <= cost(b) ? a : b;
  };
  return { bytes, tls: await best("tls"), grpc: await best("grpc") };
}

async function measure(kind: Kind, bytes: number, material: Material): Promise<TransportRun> {
  const receiver = child();
  const sender = child();
  try {
    const ready = answer(receiver);
    receiver.send({ role: "receive", kind, bytes, material } satisfies Start);
    const { port } = (await ready) as { port: number };
    const received = answer(receiver);
    const sent = answer(sender);
    sender.send({ role: "send", kind, bytes, material, port } satisfies Start);
    const [send, receive] = (await Promise.all([sent, received])) as { cpuSeconds: number; at: number }[];
    const gib = bytes / (1024 * MiB);
    const perGiB = (s: number) => Math.round((s / gib) * 100) / 100;
    return {
      MBps: Math.round(bytes / 1e6 / ((receive.at - send.at) / 1000)),
      send: { cpuSecondsPerGiB: perGiB(send.cpuSeconds) },
      receive: { cpuSecondsPerGiB: perGiB(receive.cpuSeconds) },
    };
  } finally {
    await Promise.all([receiver, sender].map(stop));
  }
}

/** Lets a child exit on its own (a profile, if one was asked for with --cpu-prof, is then written); kills a stuck one. */
async function stop(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((resolve) => proc.once("exit", resolve));
  if (proc.connected) proc.disconnect();
  const timer = setTimeout(() => proc.kill(), 5_000);
  await exited;
  clearTimeout(timer);
}

function child(): ChildProcess {
  return fork(new URL(import.meta.url), { env: { ...process.env, [ROLE_ENV]: "1" }, stdio: "inherit" });
}

function answer(proc: ChildProcess): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const onExit = (code: number | null) =>
      reject(new Error(`a transport benchmark process exited (${code}) before answering`));
    proc.once("exit", onExit);
    proc.once("message", (m) => {
      proc.off("exit", onExit);
      resolve(m as Answer);
    });
  });
}

/** CPU seconds this process has spent since `from`. */
function cpuSince(from: NodeJS.CpuUsage): number {
  const c = process.cpuUsage(from);
  return (c.user + c.system) / 1e6;
}

/** Writes `bytes` in 1 MiB pieces to `write`, waiting for `drain` whenever it answers false. */
async function pump(bytes: number, write: (b: Buffer) => boolean, drained: () => Promise<void>): Promise<void> {
  const piece = Buffer.alloc(MiB, 0x5a);
  for (let sent = 0; sent < bytes; sent += piece.length) {
    if (!write(piece)) await drained();
  }
}

function receive(start: Start, report: (a: Answer) => void): void {
  let got = 0;
  let from: NodeJS.CpuUsage | undefined;
  const count = (data: Buffer): void => {
    from ??= process.cpuUsage();
    got += data.length;
    if (got === start.bytes) report({ cpuSeconds: cpuSince(from), at: performance.timeOrigin + performance.now() });
  };
  if (start.kind === "tls") {
    const server = tls.createServer({ cert: start.material.certPem, key: start.material.keyPem }, (socket) => {
      socket.on("data", count);
    });
    server.listen(0, "127.0.0.1", () => report({ port: (server.address() as { port: number }).port }));
    return;
  }
  const server = new grpc.Server();
  server.addService(
    {
      push: {
        path: METHOD,
        requestStream: true,
        responseStream: false,
        requestSerialize: bytesCodec.serialize,
        requestDeserialize: bytesCodec.deserialize,
        responseSerialize: bytesCodec.serialize,
        responseDeserialize: bytesCodec.deserialize,
      },
    },
    {
      push: (call: grpc.ServerReadableStream<Buffer, Buffer>, done: grpc.sendUnaryData<Buffer>) => {
        call.on("data", (message: Buffer) => {
          count(message);
          releaseReceivedMessage(message); // as the snapshot coordinator does once a message's chunks are written
        });
        call.on("end", () => done(null, Buffer.alloc(0)));
      },
    },
  );
  const credentials = grpc.ServerCredentials.createSsl(null, [
    { cert_chain: Buffer.from(start.material.certPem), private_key: Buffer.from(start.material.keyPem) },
  ]);
  server.bindAsync("127.0.0.1:0", credentials, (err, port) => {
    if (err) throw err;
    // The windows the agent gateway opens: without them Node's 64 KiB default, not the transport's CPU, would
    // set the pace. And its assembly of messages in pooled memory.
    widenFlowControlWindows(server);
    installPooledReceiving();
    report({ port });
  });
}

async function send(start: Start, report: (a: Answer) => void): Promise<void> {
  const ca = start.material.certPem;
  if (start.kind === "tls") {
    const socket = tls.connect({ host: "127.0.0.1", port: start.port, servername: "localhost", ca });
    await new Promise<void>((resolve, reject) => socket.once("secureConnect", resolve).once("error", reject));
    const from = process.cpuUsage();
    const at = performance.timeOrigin + performance.now();
    await pump(
      start.bytes,
      (b) => socket.write(b),
      () => new Promise((r) => socket.once("drain", r)),
    );
    await new Promise<void>((resolve) => socket.end(resolve));
    report({ cpuSeconds: cpuSince(from), at });
    return;
  }
  const client = new grpc.Client(`127.0.0.1:${start.port}`, grpc.credentials.createSsl(Buffer.from(ca)), {
    "grpc.ssl_target_name_override": "localhost",
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    // As the agent's client (grpc-client.ts): its window, and no retry copy of a large message.
    "grpc-node.flow_control_window": FLOW_CONTROL_WINDOW_BYTES,
    "grpc.per_rpc_retry_buffer_size": RETRY_BUFFER_BYTES,
  });
  await new Promise<void>((resolve, reject) =>
    client.waitForReady(Date.now() + 10_000, (err) => (err ? reject(err) : resolve())),
  );
  // As the agent's StreamChunkSink sends chunks: a few buffers, each reused once grpc-js has written it, with
  // room in front for the frame header that grpc-framing.ts lets grpc-js write in place.
  const inPlace = installInPlaceFraming();
  const free = Array.from({ length: 4 }, () => Buffer.alloc(FRAME_HEADER_BYTES + MiB, 0x5a));
  let freed: (() => void) | undefined;
  const from = process.cpuUsage();
  const at = performance.timeOrigin + performance.now();
  let finished: () => void = () => {};
  const call = client.makeClientStreamRequest(METHOD, bytesCodec.serialize, bytesCodec.deserialize, (err) => {
    if (err) throw err;
    finished();
  });
  for (let sent = 0; sent < start.bytes; sent += MiB) {
    while (free.length === 0) await new Promise<void>((resolve) => (freed = resolve));
    const buffer = free.pop() as (typeof free)[number];
    const message = buffer.subarray(FRAME_HEADER_BYTES);
    call.write(inPlace ? markFrameHeadroom(message) : message, () => {
      free.push(buffer);
      freed?.();
    });
  }
  await new Promise<void>((resolve) => {
    finished = resolve;
    call.end();
  });
  report({ cpuSeconds: cpuSince(from), at });
  client.close();
}

if (process.env[ROLE_ENV] && process.send) {
  const report = (a: Answer) => process.send?.(a);
  process.once("disconnect", () => process.exit(0));
  process.once("message", (m) => {
    const start = m as Start;
    if (start.role === "receive") receive(start, report);
    else void send(start, report);
  });
}
