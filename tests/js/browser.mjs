// A browser stand-in for eddy's integration tests: the official `phoenix` client, driven
// by JSON commands on stdin, reporting what it sees as JSON lines on stdout.
//
// The Rust test (tests/it/browser.rs) owns the scenario: it changes the server (results,
// callbacks, restarts) and tells this process what the page does (connect, join, push,
// leave). This process only runs the phoenix client the way ModelRiver's SDK does, so
// every reconnect, rejoin, heartbeat and ref check below is phoenix's own.
//
// Commands (one JSON object per line):
//   {"op":"socket","id","url","params"?,"authToken"?,"opts"?,"trace"?}
//       opts: heartbeatIntervalMs, timeout, and reconnectAfterMs / rejoinAfterMs as lists
//       of delays (the last repeats); trace reports every frame received
//   {"op":"connect","socket"}            {"op":"disconnect","socket"}
//   {"op":"join","socket","channel","topic"}
//   {"op":"push","channel","event","payload"?,"tag"?}
//   {"op":"leave","channel"}             {"op":"exit"}
// Events (one JSON object per line, each with "t", ms since start):
//   ready, open, close, error, frame, join, response, chan_error, chan_close, reply, left,
//   disconnected, fatal

import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { Socket } from "phoenix";
import { WebSocket } from "ws";

const started = Date.now();
const emit = (ev, fields = {}) =>
  process.stdout.write(JSON.stringify({ ev, t: Date.now() - started, ...fields }) + "\n");

const fail = (error) => {
  emit("fatal", { message: String(error && error.stack ? error.stack : error) });
  process.exit(1);
};
process.on("uncaughtException", fail);
process.on("unhandledRejection", fail);

const sockets = new Map();
const channels = new Map();

// A list of delays as phoenix's backoff function: the n-th try waits list[n-1].
const backoff = (list) => (tries) => list[Math.min(tries, list.length) - 1];

function socketCommand(cmd) {
  const opts = { ...(cmd.opts || {}) };
  for (const key of ["reconnectAfterMs", "rejoinAfterMs"]) {
    if (Array.isArray(opts[key])) opts[key] = backoff(opts[key]);
  }
  // Node 20 has no global WebSocket: without a transport phoenix would fall back to
  // long polling, so the `ws` implementation is passed explicitly.
  const socket = new Socket(cmd.url, {
    ...opts,
    transport: WebSocket,
    params: cmd.params || {},
    authToken: cmd.authToken,
  });
  const id = cmd.id;
  socket.onOpen(() => emit("open", { socket: id }));
  socket.onClose((e) => emit("close", { socket: id, code: e.code, reason: String(e.reason || "") }));
  socket.onError((e) => emit("error", { socket: id, message: String((e && e.message) || e) }));
  if (cmd.trace) {
    socket.onMessage((m) =>
      emit("frame", {
        socket: id,
        join_ref: m.join_ref,
        ref: m.ref,
        topic: m.topic,
        event: m.event,
        payload: m.payload,
      }),
    );
  }
  sockets.set(id, socket);
}

function joinCommand(cmd) {
  const channel = sockets.get(cmd.socket).channel(cmd.topic, {});
  const name = cmd.channel;
  channels.set(name, channel);
  channel.on("response", (payload) => emit("response", { channel: name, payload }));
  channel.onError((reason) => emit("chan_error", { channel: name, reason }));
  channel.onClose(() => emit("chan_close", { channel: name }));
  channel
    .join()
    .receive("ok", (response) =>
      emit("join", { channel: name, status: "ok", response, join_ref: channel.joinRef() }),
    )
    .receive("error", (response) => emit("join", { channel: name, status: "error", response }))
    .receive("timeout", () => emit("join", { channel: name, status: "timeout" }));
}

function pushCommand(cmd) {
  const name = cmd.channel;
  const reply = (status) => (response) =>
    emit("reply", { channel: name, tag: cmd.tag, status, response });
  channels
    .get(name)
    .push(cmd.event, cmd.payload || {})
    .receive("ok", reply("ok"))
    .receive("error", reply("error"))
    .receive("timeout", reply("timeout"));
}

function leaveCommand(cmd) {
  const name = cmd.channel;
  channels
    .get(name)
    .leave()
    .receive("ok", (response) => emit("left", { channel: name, status: "ok", response }))
    .receive("timeout", () => emit("left", { channel: name, status: "timeout" }));
}

const commands = {
  socket: socketCommand,
  connect: (cmd) => sockets.get(cmd.socket).connect(),
  disconnect: (cmd) =>
    sockets.get(cmd.socket).disconnect(() => emit("disconnected", { socket: cmd.socket })),
  join: joinCommand,
  push: pushCommand,
  leave: leaveCommand,
  exit: () => {
    for (const socket of sockets.values()) socket.disconnect();
    process.stdout.write("", () => process.exit(0));
  },
};

const version = (name) =>
  JSON.parse(readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url)))
    .version;
emit("ready", { phoenix: version("phoenix"), ws: version("ws"), node: process.version });

createInterface({ input: process.stdin }).on("line", (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  const run = commands[cmd.op];
  if (!run) throw new Error(`unknown command ${line}`);
  run(cmd);
});
process.stdin.on("end", () => commands.exit());
