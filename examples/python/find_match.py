#!/usr/bin/env python3
"""Find a match with matchd from Python: a small, reusable client.

    /usr/bin/python3 examples/python/find_match.py --server localhost:50051 \
        --queue duel --player alice:1500

Needs Debian's python3-grpcio and python3-grpc-tools (hence /usr/bin/python3).
The stubs are generated from proto/matchmaking/v1/matchmaking.proto when the
module is first used, into a temporary directory, so there is no build step.

Library use:

    import grpc, find_match as fm
    pb, pb_grpc = fm.load_stubs()
    stub = pb_grpc.MatchmakerStub(grpc.insecure_channel('localhost:50051'))
    try:
        match = fm.find_match(stub, 'duel', [('alice', 1500)],
                              on_event=lambda ev, stream: print(ev))
    except fm.FindMatchError as e:
        print(e.outcome, e.code, e.details)

find_match() holds one FindMatch stream. If that stream breaks after the
ticket was created (UNAVAILABLE, or the stream was dropped on our side), it
re-attaches with WatchTicket(ticket_id, after_seq=last seq seen), backing off
with jitter; events are never delivered twice. Every other ending is final and
is raised as FindMatchError with one of the OUTCOME_* values.
"""

import argparse
import atexit
import importlib
import os
import random
import shutil
import sys
import tempfile
import threading
import time

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO_DIR = os.environ.get('MATCHD_PROTO_DIR') or os.path.join(HERE, '..', '..', 'proto')

# Outcomes of find_match() other than a match. FindMatchError.outcome is one of these.
OUTCOME_NO_MATCH_IN_TIME = 'no_match_in_time'  # DEADLINE_EXCEEDED: queue's max wait or our timeout
OUTCOME_CANCELLED = 'cancelled'                # CANCELLED: someone called CancelTicket
OUTCOME_TAKEN_OVER = 'taken_over'              # ABORTED: another WatchTicket took the ticket
OUTCOME_RETRY_LATER = 'retry_later'            # RESOURCE_EXHAUSTED / UNAVAILABLE: try later or elsewhere
OUTCOME_INVALID_REQUEST = 'invalid_request'    # INVALID_ARGUMENT: caller bug, do not retry
OUTCOME_NOT_FOUND = 'not_found'                # NOT_FOUND on FindMatch: unknown queue
OUTCOME_ALREADY_WAITING = 'already_waiting'    # ALREADY_EXISTS: a player already waits in the queue
OUTCOME_TICKET_LOST = 'ticket_lost'            # NOT_FOUND on re-attach: the ticket is gone; start over
OUTCOME_ERROR = 'error'                        # anything else (INTERNAL, UNIMPLEMENTED, ...)

_RETRYABLE = {OUTCOME_NO_MATCH_IN_TIME, OUTCOME_RETRY_LATER, OUTCOME_TICKET_LOST}


class FindMatchError(Exception):
    """find_match() ended without a match.

    outcome    one of the OUTCOME_* strings
    code       the grpc.StatusCode that ended it (None if none)
    details    the server's (or gRPC's) message
    ticket_id  the ticket, if one was created
    retryable  whether starting a new find_match later can help
    """

    def __init__(self, outcome, code, details, ticket_id=None):
        super().__init__('%s: %s: %s' % (outcome, code.name if code else '-', details))
        self.outcome = outcome
        self.code = code
        self.details = details
        self.ticket_id = ticket_id
        self.retryable = outcome in _RETRYABLE


class Reattach:
    """How find_match() re-attaches after a broken stream.

    The delay before attempt n (1, 2, ...) is
    min(max_backoff, initial_backoff * multiplier**(n-1)), randomized by
    +-jitter. It gives up after max_attempts attempts in a row without an
    event, or when max_elapsed seconds passed since the stream broke (a
    server keeps a dropped ticket for its queue's reattachGrace, 10 s by
    default). Set max_attempts=0 to never re-attach.
    """

    def __init__(self, initial_backoff=0.2, multiplier=1.6, jitter=0.2, max_backoff=120.0,
                 max_attempts=6, max_elapsed=30.0):
        self.initial_backoff = initial_backoff
        self.multiplier = multiplier
        self.jitter = jitter
        self.max_backoff = max_backoff
        self.max_attempts = max_attempts
        self.max_elapsed = max_elapsed

    def delay(self, attempt):
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


class Stream:
    """The stream an event arrived on; passed to on_event.

    method     'FindMatch' or 'WatchTicket' (after a re-attach)
    ticket_id  the ticket
    """

    def __init__(self, call, method, ticket_id):
        self._call = call
        self.method = method
        self.ticket_id = ticket_id
        self.dropped = False

    def drop(self):
        """Closes this stream from our side, as a broken connection would.

        find_match() then re-attaches with WatchTicket. Useful to test
        re-attach; to give up instead, raise an exception from on_event.
        """
        self.dropped = True
        self._call.cancel()


# Stubs, generated from the .proto on first use.

_stubs = None
_stubs_lock = threading.Lock()


def _well_known_types_include():
    import grpc_tools
    candidates = [os.path.join(os.path.dirname(grpc_tools.__file__), '_proto'),
                  '/usr/include']  # Debian's libprotobuf-dev
    for path in candidates:
        if os.path.exists(os.path.join(path, 'google', 'protobuf', 'duration.proto')):
            return path
    raise RuntimeError('no google/protobuf/duration.proto in any of %s' % candidates)


def load_stubs(proto_dir=None):
    """Returns (matchmaking_pb2, matchmaking_pb2_grpc), generating them once.

    proto_dir holds matchmaking/v1/matchmaking.proto; default: the
    repository's proto/ (or $MATCHD_PROTO_DIR).
    """
    global _stubs
    with _stubs_lock:
        if _stubs is None:
            from grpc_tools import protoc
            proto_dir = os.path.abspath(proto_dir or DEFAULT_PROTO_DIR)
            proto = os.path.join(proto_dir, 'matchmaking', 'v1', 'matchmaking.proto')
            if not os.path.exists(proto):
                raise RuntimeError('%s not found; pass --proto_dir or set MATCHD_PROTO_DIR' % proto)
            out = tempfile.mkdtemp(prefix='matchd_stubs_')
            atexit.register(shutil.rmtree, out, ignore_errors=True)
            rc = protoc.main(['grpc_tools.protoc', '-I', proto_dir,
                              '-I', _well_known_types_include(),
                              '--python_out', out, '--grpc_python_out', out, proto])
            if rc != 0:
                raise RuntimeError('grpc_tools.protoc failed with status %d' % rc)
            sys.path.insert(0, out)
            _stubs = (importlib.import_module('matchmaking.v1.matchmaking_pb2'),
                      importlib.import_module('matchmaking.v1.matchmaking_pb2_grpc'))
        return _stubs


def _player(pb, p):
    if isinstance(p, pb.Player):
        return p
    pid, rating = p
    return pb.Player(id=pid, rating=rating)


def _final_outcome(code, reattaching):
    """The outcome of a status that ends find_match()."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return OUTCOME_NO_MATCH_IN_TIME
    if code == grpc.StatusCode.CANCELLED:
        return OUTCOME_CANCELLED
    if code == grpc.StatusCode.ABORTED:
        return OUTCOME_TAKEN_OVER
    if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
        return OUTCOME_RETRY_LATER
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return OUTCOME_INVALID_REQUEST
    if code == grpc.StatusCode.NOT_FOUND:
        return OUTCOME_TICKET_LOST if reattaching else OUTCOME_NOT_FOUND
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return OUTCOME_ALREADY_WAITING
    return OUTCOME_ERROR


def find_match(stub, queue, players, on_event=None, *, timeout=None, reattach=None,
               on_reattach=None):
    """Finds a match; returns the Match (matchmaking.v1.Match).

    stub         a MatchmakerStub
    queue        queue name, e.g. 'duel'
    players      the party: pb.Player messages or (id, rating) tuples
    on_event     called as on_event(event, stream) for each MatchEvent, in
                 order, never twice for one seq; stream is a Stream. An
                 exception raised here abandons the search (the ticket is
                 cancelled) and propagates.
    timeout      overall seconds to wait for a match (None: the queue's max wait)
    reattach     a Reattach policy (default Reattach())
    on_reattach  called as on_reattach(attempt, delay, code, details) before
                 each re-attach attempt

    Raises FindMatchError when there is no match; see OUTCOME_*.
    """
    pb, _ = load_stubs()
    reattach = reattach or Reattach()
    deadline = None if timeout is None else time.monotonic() + timeout
    request = pb.FindMatchRequest(queue=queue, players=[_player(pb, p) for p in players])
    ticket_id = None
    last_seq = 0
    attempt = 0          # re-attach attempts since the last event
    broken_since = None  # when the stream broke, while re-attaching

    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise FindMatchError(OUTCOME_NO_MATCH_IN_TIME, grpc.StatusCode.DEADLINE_EXCEEDED,
                                 'no match within the timeout', ticket_id)
        if ticket_id is None:
            method = 'FindMatch'
            call = stub.FindMatch(request, timeout=remaining)
        else:
            method = 'WatchTicket'
            call = stub.WatchTicket(
                pb.WatchTicketRequest(ticket_id=ticket_id, after_seq=last_seq), timeout=remaining)
        stream = Stream(call, method, ticket_id)
        try:
            for event in call:
                if event.seq <= last_seq:
                    continue  # already seen (cannot happen with after_seq; be safe)
                ticket_id = stream.ticket_id = event.ticket_id
                last_seq = event.seq
                attempt, broken_since = 0, None
                if on_event is not None:
                    on_event(event, stream)
                if event.WhichOneof('event') == 'matched':
                    call.cancel()  # the server ends the call with OK anyway
                    return event.matched.match
            # Ended with OK but without `matched` (we had seen it): ask for the match.
            ticket = stub.GetTicket(pb.GetTicketRequest(ticket_id=ticket_id),
                                    timeout=remaining or 10)
            if ticket.state == pb.Ticket.MATCHED:
                return ticket.match
            raise FindMatchError(OUTCOME_ERROR, grpc.StatusCode.OK,
                                 'stream ended without a match; ticket is %s: %s'
                                 % (pb.Ticket.State.Name(ticket.state), ticket.detail), ticket_id)
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
            broken = ticket_id is not None and (
                code == grpc.StatusCode.UNAVAILABLE or
                (code == grpc.StatusCode.CANCELLED and stream.dropped))
            if not broken:
                raise FindMatchError(_final_outcome(code, method == 'WatchTicket'), code, details,
                                     ticket_id) from None
            now = time.monotonic()
            broken_since = broken_since or now
            attempt += 1
            if attempt > reattach.max_attempts or now - broken_since > reattach.max_elapsed:
                raise FindMatchError(OUTCOME_RETRY_LATER, code,
                                     'gave up re-attaching after %d attempts: %s'
                                     % (attempt - 1, details), ticket_id) from None
            delay = reattach.delay(attempt)
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - now))
            if on_reattach is not None:
                on_reattach(attempt, delay, code, details)
            time.sleep(delay)
        except FindMatchError:
            raise
        except BaseException:
            # Abandoned by the caller (on_event raised, KeyboardInterrupt...):
            # close the stream and withdraw the ticket.
            call.cancel()
            if ticket_id is not None:
                try:
                    stub.CancelTicket(pb.CancelTicketRequest(ticket_id=ticket_id), timeout=2)
                except grpc.RpcError:
                    pass  # best effort; a dropped ticket expires after the re-attach grace
            raise


# Command line.

def _duration(d):
    return d.seconds + d.nanos / 1e9


def format_event(event):
    kind = event.WhichOneof('event')
    if kind == 'queued':
        q = event.queued
        return 'queued    ticket %s in %s (%d players waiting, max wait %gs)' % (
            event.ticket_id, q.queue, q.players_waiting, _duration(q.max_wait))
    if kind == 'searching':
        s = event.searching
        return 'searching waited %.0fs, window %.0f, %d players waiting: %s' % (
            _duration(s.waited), s.rating_window, s.players_waiting, s.reason)
    if kind == 'matched':
        return 'matched   match %s' % event.matched.match.match_id
    return 'event     %s' % event


def format_match(match):
    lines = ['match %s in %s' % (match.match_id, match.queue)]
    for i, team in enumerate(match.teams):
        lines.append('  team %d: %s; mean %g' % (
            i, ', '.join('%s (%g)' % (p.id, p.rating) for p in team.players), team.mean_rating))
    q = match.quality
    lines.append('  quality: rating spread %g, team gap %g, mean wait %.1fs' % (
        q.rating_spread, q.team_gap, _duration(q.mean_wait)))
    return '\n'.join(lines)


# Exit status of the command line per outcome.
EXIT_STATUS = {
    None: 0,  # matched
    OUTCOME_NO_MATCH_IN_TIME: 3,
    OUTCOME_CANCELLED: 4,
    OUTCOME_TAKEN_OVER: 5,
    OUTCOME_RETRY_LATER: 6,
    OUTCOME_TICKET_LOST: 7,
    OUTCOME_INVALID_REQUEST: 8,
    OUTCOME_NOT_FOUND: 9,
    OUTCOME_ALREADY_WAITING: 10,
    OUTCOME_ERROR: 1,
}

ADVICE = {
    OUTCOME_NO_MATCH_IN_TIME: 'no match in time; try again later or in another queue',
    OUTCOME_CANCELLED: 'the ticket was cancelled (CancelTicket)',
    OUTCOME_TAKEN_OVER: 'another watcher took over the ticket',
    OUTCOME_RETRY_LATER: 'server busy or unavailable; retry later or on another server',
    OUTCOME_TICKET_LOST: 'the ticket is gone; start a new search',
    OUTCOME_INVALID_REQUEST: 'invalid request (not retried)',
    OUTCOME_NOT_FOUND: 'no such queue (not retried)',
    OUTCOME_ALREADY_WAITING: 'a player is already waiting in this queue (not retried)',
    OUTCOME_ERROR: 'unexpected error',
}


def parse_player(text):
    """'alice:1500' -> ('alice', 1500.0); 'alice' -> ('alice', 0.0)."""
    pid, sep, rating = text.rpartition(':')
    if not sep:
        return (text, 0.0)
    try:
        return (pid, float(rating))
    except ValueError:
        raise argparse.ArgumentTypeError('expected ID[:RATING], got %r' % text)


def main(argv=None):
    parser = argparse.ArgumentParser(description='Find a match with matchd.')
    parser.add_argument('--server', default='localhost:50051', help='host:port of matchd')
    parser.add_argument('--queue', required=True, help='queue name, e.g. duel')
    parser.add_argument('--player', action='append', type=parse_player, required=True,
                        metavar='ID[:RATING]', help='a player of the party (repeat for more)')
    parser.add_argument('--timeout', type=float, help='seconds to wait at most')
    parser.add_argument('--proto_dir', help='dir holding matchmaking/v1/matchmaking.proto')
    args = parser.parse_args(argv)
    if args.timeout is not None and not (0 < args.timeout < float('inf')):
        parser.error('--timeout must be a number of seconds > 0')
    if args.proto_dir is not None and not os.path.isdir(args.proto_dir):
        parser.error('--proto_dir: no directory %s' % args.proto_dir)

    _, pb_grpc = load_stubs(args.proto_dir)
    with grpc.insecure_channel(args.server) as channel:
        stub = pb_grpc.MatchmakerStub(channel)

        def on_event(event, stream):
            print(format_event(event), flush=True)

        def on_reattach(attempt, delay, code, details):
            print('stream broke (%s: %s); re-attaching in %.1fs (attempt %d)'
                  % (code.name, details, delay, attempt), file=sys.stderr, flush=True)

        try:
            match = find_match(stub, args.queue, args.player, on_event,
                               timeout=args.timeout, on_reattach=on_reattach)
        except FindMatchError as e:
            print('%s: %s (%s: %s)' % (e.outcome, ADVICE[e.outcome],
                                       e.code.name if e.code else '-', e.details),
                  file=sys.stderr)
            return EXIT_STATUS[e.outcome]
        except KeyboardInterrupt:
            return 130
        print(format_match(match))
        return 0


if __name__ == '__main__':
    sys.exit(main())
