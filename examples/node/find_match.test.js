// Tests of find_match.js against a real matchd; run with node's built-in runner:
//
//   MATCHD=build/service/matchd PROTO_DIR=proto node --test examples/node/find_match.test.js
//
// Each test starts its own matchd on 127.0.0.1 port 0 (--port_file) and kills
// it by its pid afterwards. Tests synchronize on stream events and RPC
// replies, never on sleeps; every wait is bounded.
'use strict';

const assert = require('node:assert');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const test = require('node:test');
const grpc = require('@grpc/grpc-js');
const fm = require('./find_match');

const MATCHD = process.env.MATCHD;
const PROTO_DIR = process.env.PROTO_DIR;
if (!MATCHD || !PROTO_DIR) throw new Error('set MATCHD (matchd binary) and PROTO_DIR (proto/)');

const TIMEOUT_MS = 20000; // every findMatch, RPC and wait
const TEST_TIMEOUT_MS = 60000;
const Status = grpc.status;

// Rejects if promise does not settle within ms.
function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// A promise plus its resolve function.
function signal() {
  let resolve;
  const promise = new Promise((r) => { resolve = r; });
  return { promise, resolve };
}

function exited(proc) {
  if (proc.exitCode !== null || proc.signalCode !== null) {
    return Promise.resolve(proc.exitCode);
  }
  return new Promise((resolve) => proc.once('exit', (code) => resolve(code)));
}

// Starts matchd on 127.0.0.1:port (0: any) and waits for its port file.
async function startServer(tmp, flags = [], port = 0) {
  const portFile = path.join(tmp, `port-${process.hrtime.bigint()}`);
  const proc = spawn(MATCHD, ['--listen', `127.0.0.1:${port}`, '--port_file', portFile, ...flags],
    { stdio: ['ignore', 'ignore', 'ignore'] });
  const server = {
    proc,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      await within(exited(proc), TIMEOUT_MS, 'matchd to exit');
    },
  };
  // Waiting for a process to start: a bounded poll on the port file.
  const deadline = Date.now() + TIMEOUT_MS;
  while (!fs.existsSync(portFile)) {
    if (proc.exitCode !== null) throw new Error(`matchd exited with status ${proc.exitCode}`);
    if (Date.now() > deadline) {
      await server.stop();
      throw new Error('matchd wrote no port file in time');
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  server.port = Number(fs.readFileSync(portFile, 'utf8').trim());
  return server;
}

// Per test: a temp dir, a matchd, a client; all cleaned up afterwards.
async function setUp(t) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'matchd_example_'));
  const env = { tmp, servers: [], clients: [] };
  t.after(async () => {
    for (const c of env.clients) c.close();
    for (const s of env.servers) await s.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  env.startServer = async (flags, port) => {
    const server = await startServer(tmp, flags, port);
    env.servers.push(server);
    return server;
  };
  env.connect = (server) => {
    const client = fm.createClient(`127.0.0.1:${server.port}`, { protoDir: PROTO_DIR });
    env.clients.push(client);
    return client;
  };
  env.server = await env.startServer();
  env.client = env.connect(env.server);
  env.find = (queue, players, onEvent, options = {}) =>
    fm.findMatch(env.client, queue, players, onEvent, { timeoutMs: TIMEOUT_MS, ...options });
  return env;
}

async function assertOutcome(promise, outcome, code) {
  const err = await within(promise.then(
    (match) => assert.fail(`expected ${outcome}, got match ${match.match_id}`),
    (e) => e), TIMEOUT_MS + 5000, outcome);
  assert.ok(err instanceof fm.FindMatchError, err && err.stack);
  assert.deepStrictEqual([err.outcome, err.codeName], [outcome, Status[code]], err.message);
  return err;
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: new Date(Date.now() + TIMEOUT_MS) },
      (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

const opts = { timeout: TEST_TIMEOUT_MS };

// (a) Two players are matched.

test('two players get the same match', opts, async (t) => {
  const env = await setUp(t);
  const seen = { alice: [], bob: [] };
  const recorder = (name) => (ev) => { seen[name].push([ev.seq, ev.event]); };
  const [a, b] = await within(Promise.all([
    env.find('duel', [{ id: 'alice', rating: 1500 }], recorder('alice')),
    env.find('duel', [{ id: 'bob', rating: 1510 }], recorder('bob')),
  ]), TIMEOUT_MS + 5000, 'both matches');
  assert.ok(a.match_id);
  assert.strictEqual(a.match_id, b.match_id);
  assert.strictEqual(a.queue, 'duel');
  const ids = a.teams.flatMap((team) => team.players.map((p) => p.id)).sort();
  assert.deepStrictEqual(ids, ['alice', 'bob']);
  for (const [name, events] of Object.entries(seen)) {
    assert.strictEqual(events[0][0], 1, name);
    assert.strictEqual(events[events.length - 1][1], 'matched', name);
    assert.deepStrictEqual(events.map(([s]) => s), events.map((_, i) => i + 1), name);
  }
  // `queued` comes first if at all: a ticket matched within the server's
  // queued delay (50 ms) gets the match alone.
  for (const [name, events] of Object.entries(seen)) {
    assert.ok(['queued', 'matched'].includes(events[0][1]), name);
    assert.ok(events.slice(1).every(([, kind]) => kind !== 'queued'), name);
  }
});

// (b) Errors map to outcomes, and are not retried.

test('unknown queue is not_found', opts, async (t) => {
  const env = await setUp(t);
  const e = await assertOutcome(env.find('no-such-queue', [{ id: 'alice', rating: 1500 }]),
    fm.OUTCOME.NOT_FOUND, Status.NOT_FOUND);
  assert.strictEqual(e.ticketId, null);
  assert.strictEqual(e.retryable, false);
});

test('invalid player is invalid_request', opts, async (t) => {
  const env = await setUp(t);
  await assertOutcome(env.find('duel', [{ id: '', rating: 1500 }]),
    fm.OUTCOME.INVALID_REQUEST, Status.INVALID_ARGUMENT);
  await assertOutcome(env.find('duel', [{ id: 'nan', rating: NaN }]),
    fm.OUTCOME.INVALID_REQUEST, Status.INVALID_ARGUMENT);
});

test('same player twice is already_waiting; CancelTicket ends the first', opts, async (t) => {
  const env = await setUp(t);
  const queued = signal();
  const first = env.find('duel', [{ id: 'carl', rating: 1500 }], (ev) => queued.resolve(ev));
  first.catch(() => {}); // examined below
  const ev = await within(queued.promise, TIMEOUT_MS, 'carl queued');
  const e = await assertOutcome(env.find('duel', [{ id: 'carl', rating: 1500 }]),
    fm.OUTCOME.ALREADY_WAITING, Status.ALREADY_EXISTS);
  assert.strictEqual(e.retryable, false);
  await unary(env.client, 'CancelTicket', { ticket_id: ev.ticket_id });
  const c = await assertOutcome(first, fm.OUTCOME.CANCELLED, Status.CANCELLED);
  assert.strictEqual(c.ticketId, ev.ticket_id);
});

test('timeout is no_match_in_time', opts, async (t) => {
  const env = await setUp(t);
  await assertOutcome(env.find('duel', [{ id: 'dora', rating: 1500 }], null, { timeoutMs: 500 }),
    fm.OUTCOME.NO_MATCH_IN_TIME, Status.DEADLINE_EXCEEDED);
});

test('another watcher takes over: taken_over', opts, async (t) => {
  const env = await setUp(t);
  const queued = signal();
  const erin = env.find('duel', [{ id: 'erin', rating: 1500 }], (ev) => queued.resolve(ev));
  erin.catch(() => {});
  const ev = await within(queued.promise, TIMEOUT_MS, 'erin queued');
  const watch = env.client.WatchTicket({ ticket_id: ev.ticket_id, after_seq: 1 },
    { deadline: new Date(Date.now() + TIMEOUT_MS) });
  watch.on('error', () => {});
  t.after(() => watch.cancel());
  const first = await within(new Promise((resolve) => watch.once('data', resolve)),
    TIMEOUT_MS, 'the watcher\'s first event');
  assert.strictEqual(first.event, 'searching');
  await assertOutcome(erin, fm.OUTCOME.TAKEN_OVER, Status.ABORTED);
});

// (c) Re-attach after a dropped stream.

test('re-attaches with WatchTicket after a dropped stream', opts, async (t) => {
  const env = await setUp(t);
  const events = []; // [method, seq, kind] as alice's onEvent saw them
  const reattaches = [];
  const reattached = signal();
  const alice = env.find('duel', [{ id: 'alice', rating: 1500 }], (ev, stream) => {
    events.push([stream.method, ev.seq, ev.event]);
    if (ev.event === 'queued') {
      stream.drop(); // as if the connection broke
    } else if (stream.method === 'WatchTicket') {
      reattached.resolve();
    }
  }, { onReattach: (...args) => { reattaches.push(args); } });
  alice.catch(() => {});
  // WatchTicket answers with a fresh `searching` event: alice is back in the pool.
  await within(reattached.promise, TIMEOUT_MS, 'alice to re-attach');
  const b = await within(env.find('duel', [{ id: 'bob', rating: 1510 }]),
    TIMEOUT_MS + 5000, 'bob\'s match');
  const a = await within(alice, TIMEOUT_MS + 5000, 'alice\'s match');
  assert.strictEqual(a.match_id, b.match_id);
  assert.strictEqual(reattaches.length, 1, JSON.stringify(reattaches));
  assert.strictEqual(reattaches[0][2], Status.CANCELLED);
  assert.deepStrictEqual(events[0], ['FindMatch', 1, 'queued']);
  assert.deepStrictEqual([events[1][0], events[1][2]], ['WatchTicket', 'searching']);
  const last = events[events.length - 1];
  assert.deepStrictEqual([last[0], last[2]], ['WatchTicket', 'matched']);
  assert.ok(events.slice(1).every(([m]) => m === 'WatchTicket'), JSON.stringify(events));
  const seqs = events.map(([, s]) => s);
  assert.deepStrictEqual(seqs, [...new Set(seqs)].sort((x, y) => x - y),
    `seq must grow, no event twice: ${JSON.stringify(events)}`);
});

test('ticket_lost when the server restarts', opts, async (t) => {
  // The server dies after `queued` and a new one (without the ticket) takes
  // its port: the stream breaks with UNAVAILABLE, the re-attach gets
  // NOT_FOUND and findMatch gives up.
  const env = await setUp(t);
  const port = env.server.port;
  const reattaches = [];
  const e = await assertOutcome(env.find('duel', [{ id: 'fred', rating: 1500 }], async (ev) => {
    if (ev.event === 'queued') {
      await env.server.stop();
      await env.startServer([], port);
    }
  }, { onReattach: (...args) => { reattaches.push(args); } }),
  fm.OUTCOME.TICKET_LOST, Status.NOT_FOUND);
  assert.strictEqual(e.retryable, true);
  assert.ok(reattaches.length >= 1);
  assert.strictEqual(reattaches[0][2], Status.UNAVAILABLE);
});

test('a draining server: gives up after bounded attempts', opts, async (t) => {
  // SIGTERM after `queued`: the stream ends with UNAVAILABLE (draining);
  // every re-attach then finds no server, and findMatch gives up after
  // maxAttempts. (The re-attaches wait until matchd has exited: one that
  // reaches it while gRPC shuts down gets CANCELLED "CANCELLED".)
  const env = await setUp(t);
  const server = await env.startServer(['--drain_delay', '0s', '--drain_spread', '0s']);
  const client = env.connect(server);
  const reattaches = [];
  const e = await assertOutcome(fm.findMatch(client, 'duel', [{ id: 'gina', rating: 1500 }],
    (ev) => { if (ev.event === 'queued') server.proc.kill('SIGTERM'); }, {
      timeoutMs: TIMEOUT_MS,
      reattach: { initialBackoffMs: 50, maxAttempts: 3 },
      onReattach: async (...args) => {
        reattaches.push(args);
        assert.strictEqual(await within(exited(server.proc), TIMEOUT_MS, 'matchd to exit'), 0);
      },
    }), fm.OUTCOME.RETRY_LATER, Status.UNAVAILABLE);
  assert.strictEqual(e.retryable, true);
  assert.strictEqual(reattaches.length, 3, JSON.stringify(reattaches));
  assert.match(reattaches[0][3], /draining/);
});

test('throwing from onEvent withdraws the ticket', opts, async (t) => {
  const env = await setUp(t);
  let ticketId;
  const stop = new Error('stop');
  await assert.rejects(within(env.find('duel', [{ id: 'hank', rating: 1500 }], (ev) => {
    ticketId = ev.ticket_id;
    throw stop;
  }), TIMEOUT_MS + 5000, 'findMatch to reject'), (e) => e === stop);
  const ticket = await unary(env.client, 'GetTicket', { ticket_id: ticketId });
  assert.strictEqual(ticket.state, 'CANCELLED');
});
