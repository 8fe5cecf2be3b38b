#!/usr/bin/env node
// Find a match with matchd from Node.js: a small, reusable client.
//
//   node examples/node/find_match.js --server localhost:50051 --queue duel --player alice:1500
//
// Uses @grpc/grpc-js and @grpc/proto-loader, which loads
// proto/matchmaking/v1/matchmaking.proto at run time (no code generation, no
// build step). CommonJS; Node 18 or later.
//
// Library use:
//
//   const fm = require('./find_match');
//   const client = fm.createClient('localhost:50051');
//   try {
//     const match = await fm.findMatch(client, 'duel', [{ id: 'alice', rating: 1500 }],
//                                      (event, stream) => console.log(event));
//   } catch (e) {
//     if (e instanceof fm.FindMatchError) console.log(e.outcome, e.codeName, e.details);
//   }
//
// findMatch() holds one FindMatch stream. If that stream breaks after the
// ticket was created (UNAVAILABLE, or the stream was dropped on our side), it
// re-attaches with WatchTicket(ticket_id, after_seq = last seq seen), backing
// off with jitter; events are never delivered twice. Every other ending is
// final and rejects with a FindMatchError carrying one of the OUTCOME values.
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const DEFAULT_PROTO_DIR =
  process.env.MATCHD_PROTO_DIR || path.join(__dirname, '..', '..', 'proto');

// Outcomes of findMatch() other than a match; FindMatchError.outcome is one of these.
const OUTCOME = Object.freeze({
  NO_MATCH_IN_TIME: 'no_match_in_time', // DEADLINE_EXCEEDED: queue's max wait or our timeout
  CANCELLED: 'cancelled', //               CANCELLED: someone called CancelTicket
  TAKEN_OVER: 'taken_over', //             ABORTED: another WatchTicket took the ticket
  RETRY_LATER: 'retry_later', //           RESOURCE_EXHAUSTED / UNAVAILABLE: try later or elsewhere
  INVALID_REQUEST: 'invalid_request', //   INVALID_ARGUMENT: caller bug, do not retry
  NOT_FOUND: 'not_found', //               NOT_FOUND on FindMatch: unknown queue
  ALREADY_WAITING: 'already_waiting', //   ALREADY_EXISTS: a player already waits in the queue
  TICKET_LOST: 'ticket_lost', //           NOT_FOUND on re-attach: the ticket is gone; start over
  ERROR: 'error', //                       anything else (INTERNAL, UNIMPLEMENTED, ...)
});
const RETRYABLE = new Set([OUTCOME.NO_MATCH_IN_TIME, OUTCOME.RETRY_LATER, OUTCOME.TICKET_LOST]);

const Status = grpc.status;

// findMatch() ended without a match. outcome: one of OUTCOME; code: the
// grpc status code that ended it; details: the server's (or gRPC's) message;
// ticketId: the ticket, if one was created; retryable: whether starting a new
// findMatch later can help.
class FindMatchError extends Error {
  constructor(outcome, code, details, ticketId) {
    super(`${outcome}: ${Status[code]}: ${details}`);
    this.name = 'FindMatchError';
    this.outcome = outcome;
    this.code = code;
    this.codeName = Status[code];
    this.details = details;
    this.ticketId = ticketId;
    this.retryable = RETRYABLE.has(outcome);
  }
}

// How findMatch() re-attaches after a broken stream. The delay before attempt
// n (1, 2, ...) is min(maxBackoffMs, initialBackoffMs * multiplier^(n-1)),
// randomized by +-jitter. It gives up after maxAttempts attempts in a row
// without an event, or when maxElapsedMs passed since the stream broke (a
// server keeps a dropped ticket for its queue's reattachGrace, 10 s by
// default). maxAttempts 0 never re-attaches.
const DEFAULT_REATTACH = Object.freeze({
  initialBackoffMs: 200,
  multiplier: 1.6,
  jitter: 0.2,
  maxBackoffMs: 120000,
  maxAttempts: 6,
  maxElapsedMs: 30000,
});

function backoffMs(policy, attempt) {
  const base = Math.min(policy.maxBackoffMs,
    policy.initialBackoffMs * Math.pow(policy.multiplier, attempt - 1));
  return base * (1 - policy.jitter + 2 * policy.jitter * Math.random());
}

// The matchmaking.v1 package, loaded from the .proto once per proto dir.
const packages = new Map();
function loadMatchmaking(protoDir = DEFAULT_PROTO_DIR) {
  protoDir = path.resolve(protoDir);
  if (!packages.has(protoDir)) {
    const definition = protoLoader.loadSync('matchmaking/v1/matchmaking.proto', {
      includeDirs: [protoDir], // google/protobuf/*.proto come bundled with proto-loader
      keepCase: true, //          field names as in the .proto: ticket_id, after_seq
      longs: Number, //           uint64 seq as a Number (exact up to 2^53)
      enums: String,
      defaults: true,
      oneofs: true, //            event.event is 'queued' | 'searching' | 'matched'
    });
    packages.set(protoDir, grpc.loadPackageDefinition(definition).matchmaking.v1);
  }
  return packages.get(protoDir);
}

// A Matchmaker client for host:port (plaintext unless credentials are given).
function createClient(address, { protoDir, credentials, channelOptions } = {}) {
  const { Matchmaker } = loadMatchmaking(protoDir);
  return new Matchmaker(address, credentials || grpc.credentials.createInsecure(), channelOptions);
}

function finalOutcome(code, reattaching) {
  switch (code) {
    case Status.DEADLINE_EXCEEDED: return OUTCOME.NO_MATCH_IN_TIME;
    case Status.CANCELLED: return OUTCOME.CANCELLED;
    case Status.ABORTED: return OUTCOME.TAKEN_OVER;
    case Status.RESOURCE_EXHAUSTED:
    case Status.UNAVAILABLE: return OUTCOME.RETRY_LATER;
    case Status.INVALID_ARGUMENT: return OUTCOME.INVALID_REQUEST;
    case Status.NOT_FOUND: return reattaching ? OUTCOME.TICKET_LOST : OUTCOME.NOT_FOUND;
    case Status.ALREADY_EXISTS: return OUTCOME.ALREADY_WAITING;
    default: return OUTCOME.ERROR;
  }
}

function abortError(signal) {
  return signal.reason !== undefined ? signal.reason : new Error('aborted');
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) return reject(abortError(signal));
    const onAbort = () => { clearTimeout(timer); reject(abortError(signal)); };
    const timer = setTimeout(() => {
      if (signal) signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    if (signal) signal.addEventListener('abort', onAbort, { once: true });
  });
}

function unaryCall(client, method, request, timeoutMs) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: new Date(Date.now() + timeoutMs) },
      (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

// Reads one FindMatch/WatchTicket call. handle(event) runs for each event in
// order (awaited, so an async onEvent delays the next one). Resolves with
// { match } on `matched`, or { code, details } when the call ends otherwise;
// rejects if handle throws or signal aborts.
function readStream(call, handle, signal) {
  return new Promise((resolve, reject) => {
    let chain = Promise.resolve();
    let settled = false;
    const settle = (fn, value) => {
      if (settled) return;
      settled = true;
      if (signal) signal.removeEventListener('abort', onAbort);
      fn(value);
    };
    const onAbort = () => { settle(reject, abortError(signal)); call.cancel(); };
    if (signal) signal.addEventListener('abort', onAbort, { once: true });
    call.on('data', (event) => {
      chain = chain
        .then(async () => {
          if (settled) return;
          const match = await handle(event);
          if (match) {
            settle(resolve, { match });
            call.cancel(); // the server ends the call with OK anyway
          }
        })
        .catch((err) => { settle(reject, err); call.cancel(); });
    });
    call.on('error', (err) => {
      chain = chain.then(() => settle(resolve, { code: err.code, details: err.details }));
    });
    call.on('status', (status) => {
      if (status.code === Status.OK) {
        chain = chain.then(() => settle(resolve, { code: Status.OK, details: status.details }));
      }
    });
  });
}

// Finds a match; resolves with the Match.
//
//   client    a Matchmaker client (createClient)
//   queue     queue name, e.g. 'duel'
//   players   the party: [{ id, rating, latency_ms?, attributes? }, ...]
//   onEvent   called as onEvent(event, stream) for each MatchEvent, in order,
//             never twice for one seq; may return a promise (the next event
//             waits for it). stream: { method: 'FindMatch' | 'WatchTicket',
//             ticketId, drop() }. drop() closes the stream from our side as a
//             broken connection would, so findMatch re-attaches (for tests).
//             If onEvent throws, the search is abandoned (ticket cancelled)
//             and findMatch rejects with that error.
//   options   { timeoutMs, reattach: {...DEFAULT_REATTACH}, signal (AbortSignal:
//             abandons like a throwing onEvent), onReattach(attempt, delayMs,
//             code, details) (may return a promise) }
//
// Rejects with FindMatchError when there is no match; see OUTCOME.
async function findMatch(client, queue, players, onEvent, options = {}) {
  const policy = { ...DEFAULT_REATTACH, ...options.reattach };
  const { signal, onReattach } = options;
  const deadline = options.timeoutMs == null ? null : Date.now() + options.timeoutMs;
  let ticketId = null;
  let lastSeq = 0;
  let attempt = 0; // re-attach attempts since the last event
  let brokenSince = null; // when the stream broke, while re-attaching

  for (;;) {
    const remaining = deadline == null ? null : deadline - Date.now();
    if (remaining != null && remaining <= 0) {
      throw new FindMatchError(OUTCOME.NO_MATCH_IN_TIME, Status.DEADLINE_EXCEEDED,
        'no match within the timeout', ticketId);
    }
    const callOptions = remaining == null ? {} : { deadline: new Date(Date.now() + remaining) };
    const method = ticketId == null ? 'FindMatch' : 'WatchTicket';
    const call = method === 'FindMatch'
      ? client.FindMatch({ queue, players }, callOptions)
      : client.WatchTicket({ ticket_id: ticketId, after_seq: lastSeq }, callOptions);
    const stream = { method, ticketId, dropped: false, drop: null };
    stream.drop = () => { stream.dropped = true; call.cancel(); };

    let result;
    try {
      result = await readStream(call, async (event) => {
        if (stream.dropped) return null; // as if the connection had broken before it
        if (event.seq <= lastSeq) return null; // already seen (cannot happen with after_seq)
        ticketId = stream.ticketId = event.ticket_id;
        lastSeq = event.seq;
        attempt = 0;
        brokenSince = null;
        if (onEvent) await onEvent(event, stream);
        return event.event === 'matched' ? event.matched.match : null;
      }, signal);
    } catch (err) {
      // Abandoned by the caller: withdraw the ticket (best effort; a dropped
      // ticket also ends by itself after the re-attach grace).
      if (ticketId != null) {
        await unaryCall(client, 'CancelTicket', { ticket_id: ticketId }, 2000).catch(() => {});
      }
      throw err;
    }
    if (result.match) return result.match;

    const { code, details } = result;
    if (code === Status.OK) {
      // Ended with OK without `matched` (we had seen it already): ask for the match.
      const ticket = await unaryCall(client, 'GetTicket', { ticket_id: ticketId }, 10000);
      if (ticket.state === 'MATCHED') return ticket.match;
      throw new FindMatchError(OUTCOME.ERROR, Status.OK,
        `stream ended without a match; ticket is ${ticket.state}: ${ticket.detail}`, ticketId);
    }
    const broken = ticketId != null &&
      (code === Status.UNAVAILABLE || (code === Status.CANCELLED && stream.dropped));
    if (!broken) {
      throw new FindMatchError(finalOutcome(code, method === 'WatchTicket'), code, details,
        ticketId);
    }
    const now = Date.now();
    if (brokenSince == null) brokenSince = now;
    attempt += 1;
    if (attempt > policy.maxAttempts || now - brokenSince > policy.maxElapsedMs) {
      throw new FindMatchError(OUTCOME.RETRY_LATER, code,
        `gave up re-attaching after ${attempt - 1} attempts: ${details}`, ticketId);
    }
    let delay = backoffMs(policy, attempt);
    if (deadline != null) delay = Math.min(delay, Math.max(0, deadline - now));
    if (onReattach) await onReattach(attempt, delay, code, details);
    await sleep(delay, signal);
  }
}

// Command line.

const seconds = (d) => (d ? Number(d.seconds) + d.nanos / 1e9 : 0);

function formatEvent(event) {
  switch (event.event) {
    case 'queued': {
      const q = event.queued;
      return `queued    ticket ${event.ticket_id} in ${q.queue} ` +
        `(${q.players_waiting} players waiting, max wait ${seconds(q.max_wait)}s)`;
    }
    case 'searching': {
      const s = event.searching;
      return `searching waited ${seconds(s.waited).toFixed(0)}s, window ${s.rating_window.toFixed(0)}, ` +
        `${s.players_waiting} players waiting: ${s.reason}`;
    }
    case 'matched':
      return `matched   match ${event.matched.match.match_id}`;
    default:
      return `event     ${JSON.stringify(event)}`;
  }
}

function formatMatch(match) {
  const lines = [`match ${match.match_id} in ${match.queue}`];
  match.teams.forEach((team, i) => {
    const players = team.players.map((p) => `${p.id} (${p.rating})`).join(', ');
    lines.push(`  team ${i}: ${players}; mean ${team.mean_rating}`);
  });
  const q = match.quality;
  lines.push(`  quality: rating spread ${q.rating_spread}, team gap ${q.team_gap}, ` +
    `mean wait ${seconds(q.mean_wait).toFixed(1)}s`);
  return lines.join('\n');
}

// Exit status of the command line per outcome.
const EXIT_STATUS = {
  [OUTCOME.NO_MATCH_IN_TIME]: 3,
  [OUTCOME.CANCELLED]: 4,
  [OUTCOME.TAKEN_OVER]: 5,
  [OUTCOME.RETRY_LATER]: 6,
  [OUTCOME.TICKET_LOST]: 7,
  [OUTCOME.INVALID_REQUEST]: 8,
  [OUTCOME.NOT_FOUND]: 9,
  [OUTCOME.ALREADY_WAITING]: 10,
  [OUTCOME.ERROR]: 1,
};

const ADVICE = {
  [OUTCOME.NO_MATCH_IN_TIME]: 'no match in time; try again later or in another queue',
  [OUTCOME.CANCELLED]: 'the ticket was cancelled (CancelTicket)',
  [OUTCOME.TAKEN_OVER]: 'another watcher took over the ticket',
  [OUTCOME.RETRY_LATER]: 'server busy or unavailable; retry later or on another server',
  [OUTCOME.TICKET_LOST]: 'the ticket is gone; start a new search',
  [OUTCOME.INVALID_REQUEST]: 'invalid request (not retried)',
  [OUTCOME.NOT_FOUND]: 'no such queue (not retried)',
  [OUTCOME.ALREADY_WAITING]: 'a player is already waiting in this queue (not retried)',
  [OUTCOME.ERROR]: 'unexpected error',
};

// 'alice:1500' -> { id: 'alice', rating: 1500 }; 'alice' -> { id: 'alice', rating: 0 }.
function parsePlayer(text) {
  const i = text.lastIndexOf(':');
  if (i < 0) return { id: text, rating: 0 };
  const rating = Number(text.slice(i + 1));
  if (text.slice(i + 1) === '' || Number.isNaN(rating)) {
    throw new Error(`expected ID[:RATING], got ${JSON.stringify(text)}`);
  }
  return { id: text.slice(0, i), rating };
}

const USAGE = `usage: find_match.js [--server HOST:PORT] --queue QUEUE --player ID[:RATING]...
                     [--timeout SECONDS] [--proto_dir DIR]
Find a match with matchd.
  --server     host:port of matchd (default localhost:50051)
  --queue      queue name, e.g. duel
  --player     a player of the party (repeat for more)
  --timeout    seconds to wait at most
  --proto_dir  dir holding matchmaking/v1/matchmaking.proto`;

function parseArgs(argv) {
  const args = { server: 'localhost:50051', players: [] };
  for (let i = 0; i < argv.length; i++) {
    let [flag, value] = argv[i].split(/=(.*)/s);
    if (flag === '-h' || flag === '--help') return null;
    if (value === undefined) {
      if (i + 1 >= argv.length) throw new Error(`${flag} needs a value`);
      value = argv[++i];
    }
    switch (flag) {
      case '--server': args.server = value; break;
      case '--queue': args.queue = value; break;
      case '--player': args.players.push(parsePlayer(value)); break;
      case '--timeout': {
        const seconds = Number(value);
        if (!(seconds > 0) || !Number.isFinite(seconds)) {
          throw new Error(`--timeout must be a number of seconds > 0, got "${value}"`);
        }
        args.timeoutMs = seconds * 1000;
        break;
      }
      case '--proto_dir': args.protoDir = value; break;
      default: throw new Error(`unknown flag ${flag}`);
    }
  }
  if (!args.queue || args.players.length === 0) throw new Error('--queue and --player are required');
  if (args.protoDir !== undefined && !fs.existsSync(path.join(args.protoDir, 'matchmaking'))) {
    throw new Error(`--proto_dir: no matchmaking/ protos under ${args.protoDir}`);
  }
  return args;
}

async function main(argv) {
  let args;
  try {
    args = parseArgs(argv);
  } catch (e) {
    console.error(`find_match.js: ${e.message}\n${USAGE}`);
    return 2;
  }
  if (args === null) {
    console.log(USAGE);
    return 0;
  }
  const client = createClient(args.server, { protoDir: args.protoDir });
  const abort = new AbortController();
  const onSigint = () => abort.abort(new Error('interrupted'));
  process.once('SIGINT', onSigint);
  try {
    const match = await findMatch(client, args.queue, args.players,
      (event) => console.log(formatEvent(event)), {
        timeoutMs: args.timeoutMs,
        signal: abort.signal,
        onReattach: (attempt, delayMs, code, details) => console.error(
          `stream broke (${Status[code]}: ${details}); ` +
          `re-attaching in ${(delayMs / 1000).toFixed(1)}s (attempt ${attempt})`),
      });
    console.log(formatMatch(match));
    return 0;
  } catch (e) {
    if (e instanceof FindMatchError) {
      console.error(`${e.outcome}: ${ADVICE[e.outcome]} (${e.codeName}: ${e.details})`);
      return EXIT_STATUS[e.outcome];
    }
    if (abort.signal.aborted) return 130;
    throw e;
  } finally {
    process.removeListener('SIGINT', onSigint);
    client.close();
  }
}

module.exports = {
  OUTCOME,
  DEFAULT_REATTACH,
  FindMatchError,
  loadMatchmaking,
  createClient,
  findMatch,
  formatEvent,
  formatMatch,
  parsePlayer,
};

if (require.main === module) {
  main(process.argv.slice(2)).then((code) => { process.exitCode = code; },
    (err) => { console.error(err); process.exitCode = 1; });
}
