/**
 * The proxy's native wires (src/proxy/wire.c through src/proxy/wire.ts) on
 * real TCP connections over loopback: bytes both ways, back-pressure, the
 * close that does not reset a reply away, failures, and the hand-over to
 * node:net.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { after, before, test } from 'node:test';
import { NativeWire, StreamWire, keep, nativeWires, type Wire, type WireHandlers } from '../../src/proxy/wire.js';
import { NetnsPorts } from '../../src/runtimes/netns.js';
import { takeBackend } from '../../src/proxy/backends.js';

let server: net.Server;
let port: number;
/** Server-side sockets, in the order clients connected. */
const accepted: net.Socket[] = [];
let onAccept: ((s: net.Socket) => void) | undefined;

before(async () => {
  assert.ok(nativeWires(), 'the kiln-wire addon must be built (scripts/setup)');
  server = net.createServer((s) => {
    accepted.push(s);
    onAccept?.(s);
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  port = (server.address() as net.AddressInfo).port;
});
after(() => server.close());

/** A native wire on a fresh connection (made by node:net and adopted), and the server's end of it. */
async function pair(): Promise<{ wire: NativeWire; peer: net.Socket }>;
/** The same with a wire of either kind. */
async function pair(kind: 'native' | 'node:net'): Promise<{ wire: Wire; peer: net.Socket }>;
async function pair(kind: 'native' | 'node:net' = 'native'): Promise<{ wire: Wire; peer: net.Socket }> {
  const got = new Promise<net.Socket>((ok) => (onAccept = ok));
  const socket = net.connect({ port, host: '127.0.0.1' });
  await new Promise((ok) => socket.once('connect', ok));
  const peer = await got;
  const wire = kind === 'native' ? NativeWire.adopt(socket) : new StreamWire(socket);
  assert.ok(wire);
  return { wire, peer };
}

/** Events a wire reports, as a log. */
function record(wire: Wire): { data: Buffer[]; events: string[]; text(): string } {
  const data: Buffer[] = [];
  const events: string[] = [];
  const h: WireHandlers = {
    data: (c) => data.push(keep(c)), // a native wire's bytes are good until its next read
    end: () => events.push('end'),
    drain: () => events.push('drain'),
    gone: () => events.push('gone'),
  };
  wire.handlers = h;
  return { data, events, text: () => Buffer.concat(data).toString() };
}

const until = async (what: string, ok: () => boolean, ms = 5000): Promise<void> => {
  const t0 = Date.now();
  while (!ok()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
};

test('bytes pass both ways; nothing is read before resume or while paused', async () => {
  const { wire, peer } = await pair();
  const log = record(wire);
  peer.write('hello');
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(log.data.length, 0, 'read before resume');
  wire.resume();
  await until('hello', () => log.text() === 'hello');
  wire.pause();
  peer.write(' world');
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(log.text(), 'hello', 'read while paused');
  wire.resume();
  await until('world', () => log.text() === 'hello world');
  const back: Buffer[] = [];
  peer.on('data', (c) => back.push(c));
  assert.equal(wire.write(Buffer.from('answer')), true);
  await until('answer', () => Buffer.concat(back).toString() === 'answer');
  peer.end();
  await until('end', () => log.events.includes('end'));
  // Half-closed by the peer: writing still works.
  assert.equal(wire.write(Buffer.from('!')), true);
  await until('!', () => Buffer.concat(back).toString() === 'answer!');
  wire.destroy();
  assert.equal(wire.closed, true);
  assert.deepEqual(log.events, ['end']);
});

test("a native wire's bytes are a view until its next read; keep() copies them, and only them", async () => {
  const { wire, peer } = await pair();
  const views: Buffer[] = [];
  wire.handlers = { data: (c) => views.push(c), end() {}, drain() {}, gone() {} };
  wire.resume();
  peer.write('first');
  await until('first', () => views.length === 1);
  const kept = keep(views[0]!);
  peer.write('SECOND');
  await until('second', () => views.length === 2);
  assert.equal(kept.toString(), 'first');
  assert.notEqual(views[0]!.toString(), 'first', 'the next read overwrote the first view');
  const own = Buffer.from('own');
  assert.equal(keep(own), own, 'a buffer of its own is not copied');
  wire.destroy();
});

test('a peer that does not read: write says so, the bytes wait in the wire, all arrive in order, then drain', async () => {
  const { wire, peer } = await pair();
  const log = record(wire);
  peer.pause();
  const payload = randomBytes(8 << 20);
  let sent = true;
  for (let off = 0; off < payload.length; off += 1 << 20) sent = wire.write(payload.subarray(off, off + (1 << 20)));
  assert.equal(sent, false, 'eight MiB fit the socket buffers');
  const got = createHash('sha256');
  let n = 0;
  peer.on('data', (c: Buffer) => {
    got.update(c);
    n += c.length;
  });
  peer.resume();
  await until('all bytes', () => n === payload.length, 20000);
  assert.equal(got.digest('hex'), createHash('sha256').update(payload).digest('hex'));
  await until('drain', () => log.events.includes('drain'));
  wire.destroy();
});

for (const [what, size] of [
  ['a reply the socket takes at once', 1000],
  ['a reply that must wait in the wire', 4 << 20],
] as const) {
  test(`end sends what waits, then FIN, without a reset even when the peer sent bytes that were never read: ${what}`, { timeout: 30_000 }, async () => {
    const { wire, peer } = await pair();
    record(wire);
    // The peer's bytes sit unread in the wire's socket: closing it outright would answer with a reset,
    // and a reset throws away what the peer had not read yet (the reply).
    peer.write(randomBytes(64 << 10));
    await new Promise((r) => setTimeout(r, 50));
    peer.pause();
    const reply = randomBytes(size);
    wire.end(reply);
    assert.equal(wire.closed, true);
    const chunks: Buffer[] = [];
    let error: Error | undefined;
    peer.on('error', (e) => (error = e));
    const ended = new Promise((ok) => (peer.once('end', ok), peer.once('close', ok)));
    // A client that goes on sending (a pipelined request) meets no reset either.
    for (let i = 0; i < 5; i++) {
      peer.write(randomBytes(1000));
      await new Promise((r) => setTimeout(r, 20));
    }
    peer.on('data', (c: Buffer) => chunks.push(c));
    peer.resume();
    await ended;
    assert.equal(error, undefined);
    assert.ok(Buffer.concat(chunks).equals(reply), 'the whole reply arrived');
    peer.end(); // the wire was waiting for this to close its socket
  });
}

for (const kind of ['native', 'node:net'] as const) {
  test(`an ending ${kind} wire cuts off a peer that takes none of what waits; one that takes it slowly gets it all`, { timeout: 60_000 }, async () => {
    // The wire sees the peer's progress only as the kernel's send buffer frees room: the stall time is a
    // second here (a minute in kiln), and the slow reader still takes megabytes a second.
    const stallMs = 1000;
    const reply = randomBytes(32 << 20); // more than the socket buffers hold: most of it waits in the wire
    const open = async () => {
      const { wire, peer } = await pair(kind);
      peer.pause();
      peer.on('error', () => undefined); // a close with bytes unread may come as a reset
      wire.end(reply, stallMs);
      const ended = new Promise((ok) => (peer.once('end', ok), peer.once('close', ok)));
      return { peer, ended };
    };

    const stalled = await open();
    await new Promise((r) => setTimeout(r, 3 * stallMs));
    let got = 0;
    stalled.peer.on('data', (c: Buffer) => (got += c.length));
    stalled.peer.resume();
    await stalled.ended;
    assert.ok(got < reply.length, 'the stalled peer was never cut off');

    // Slow but steady: 16 MiB/s, so the whole reply takes at least two stall times.
    const slow = await open();
    const hash = createHash('sha256');
    got = 0;
    slow.peer.on('data', (c: Buffer) => {
      got += c.length;
      hash.update(c);
      slow.peer.pause();
      setTimeout(() => slow.peer.resume(), c.length / 16384);
    });
    slow.peer.resume();
    await slow.ended;
    assert.equal(got, reply.length, 'a reader that kept taking bytes was cut off');
    assert.equal(hash.digest('hex'), createHash('sha256').update(reply).digest('hex'));
    slow.peer.destroy();
  });
}

test('bytes that came just before a reset are read before the reset is reported', async () => {
  const { wire, peer } = await pair();
  const log = record(wire);
  // A server's early answer (say a 413 to an upload), then its close with the upload unread: a reset behind the answer.
  peer.write('HTTP/1.1 413 Content Too Large\r\n\r\n');
  await new Promise((r) => setTimeout(r, 50));
  peer.resetAndDestroy();
  await new Promise((r) => setTimeout(r, 50));
  wire.resume();
  await until('gone', () => log.events.includes('gone'));
  assert.equal(log.text(), 'HTTP/1.1 413 Content Too Large\r\n\r\n');
});

test('a wire ending with bytes still waiting does not spin while the peer sends or closes', async () => {
  const { wire, peer } = await pair();
  record(wire);
  wire.resume(); // as a client's wire is when its last answer goes out
  peer.pause();
  wire.end(randomBytes(8 << 20)); // the peer reads none of it yet
  peer.write(randomBytes(1000)); // and sends, then closes its side: each would wake a poll that watched reads and took none
  peer.end();
  const cpu0 = process.cpuUsage();
  await new Promise((r) => setTimeout(r, 1000));
  const cpu = process.cpuUsage(cpu0);
  // A spinning loop takes the whole second; an idle one a few ms (other work on the machine does not count here).
  assert.ok(cpu.user + cpu.system < 500_000, `the process used ${Math.round((cpu.user + cpu.system) / 1000)} ms of CPU in 1 s`);
  peer.destroy();
});

test('a reset by the peer is reported once, as gone', async () => {
  const { wire, peer } = await pair();
  const log = record(wire);
  wire.resume();
  peer.resetAndDestroy();
  await until('gone', () => log.events.includes('gone'));
  assert.equal(wire.closed, true);
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(log.events, ['gone']);
  assert.equal(wire.write(Buffer.from('x')), false);
});

test('a write to a reset connection fails later, as gone, never inside the write', async () => {
  const { wire, peer } = await pair();
  const log = record(wire); // not reading: the reset is found by writing
  peer.resetAndDestroy();
  await new Promise((r) => setTimeout(r, 50));
  let inside = true;
  wire.handlers = { ...wire.handlers, gone: () => log.events.push(inside ? 'gone inside write' : 'gone') };
  wire.write(Buffer.from('x'));
  wire.write(Buffer.from('y'));
  inside = false;
  await until('gone', () => log.events.length > 0);
  assert.deepEqual(log.events, ['gone']);
});

test('a wire from an fd still connecting sends what was written once connected', async () => {
  const got = new Promise<net.Socket>((ok) => (onAccept = ok));
  // As the proxy's backends are made: kiln-netns connects a non-blocking socket (here in this process's own
  // namespace) and the wire owns the fd while the connect may still be under way.
  const fd = new NetnsPorts('wire-test', process.pid).link(port).connectFd!();
  const wire = NativeWire.fromFd(fd)!;
  assert.ok(wire);
  const log = record(wire);
  wire.resume();
  wire.write(Buffer.from('early'));
  const peer = await got;
  const back: Buffer[] = [];
  peer.on('data', (c) => back.push(c));
  await until('early', () => Buffer.concat(back).toString() === 'early');
  peer.write('late');
  await until('late', () => log.text() === 'late');
  wire.destroy();
});

test('a backend connection the link cannot make (its sandbox gone) fails as an event, without a second try', async () => {
  const ports = new NetnsPorts('wire-test-gone', process.pid);
  const link = ports.link(port);
  let connects = 0;
  const counted = { ...link, connect: () => (connects++, link.connect()) };
  ports.close();
  const { wire } = takeBackend(counted);
  const log = record(wire);
  wire.resume();
  await until('gone', () => log.events.includes('gone'));
  assert.equal(connects, 0, 'the refusal was tried again through connect()');
  assert.ok(wire.closed);
});

test('toSocket hands the connection to node:net once what waits is sent', async () => {
  const { wire, peer } = await pair();
  record(wire);
  peer.pause();
  const payload = randomBytes(4 << 20);
  assert.equal(wire.write(payload), false);
  let socket: net.Socket | undefined;
  wire.toSocket((s) => (socket = s));
  assert.equal(socket, undefined, 'handed over with bytes waiting');
  const chunks: Buffer[] = [];
  peer.on('data', (c: Buffer) => chunks.push(c));
  peer.resume();
  await until('hand-over', () => socket !== undefined, 20000);
  assert.equal(wire.closed, true);
  const s = socket!;
  s.write('after');
  const inOrder = Buffer.concat([payload, Buffer.from('after')]);
  await until('bytes after the hand-over', () => Buffer.concat(chunks).length === inOrder.length, 20000);
  assert.ok(Buffer.concat(chunks).equals(inOrder));
  const read = new Promise<string>((ok) => s.once('data', (c) => ok(c.toString())));
  peer.write('to node');
  assert.equal(await read, 'to node');
  s.destroy();
});

test('bad arguments are type errors, not crashes; a closed wire ignores calls', async () => {
  const { wire, peer } = await pair();
  wire.destroy();
  assert.equal(wire.write(Buffer.from('x')), false);
  wire.pause();
  wire.resume();
  wire.end();
  assert.equal(NativeWire.fromFd(-1), undefined, 'no wire (the caller keeps its fd)');
  peer.destroy();
});
