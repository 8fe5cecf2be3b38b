#!/usr/bin/env python3
"""Tests of examples/python/find_match.py against a real matchd.

    /usr/bin/python3 examples/python/find_match_test.py \
        --matchd build/service/matchd --proto_dir proto [unittest args...]

Each test starts its own matchd on 127.0.0.1 port 0 (--port_file) and kills
it by its pid afterwards. Tests synchronize on stream events and RPC replies,
never on sleeps; every wait is bounded.
"""

import argparse
import concurrent.futures
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import find_match as fm  # noqa: E402

TIMEOUT = 20  # seconds: every find_match, RPC and wait
STARTUP_TIMEOUT = 20  # seconds for matchd to write its port file

ARGS = None
pb = pb_grpc = None


def setUpModule():
    global pb, pb_grpc
    pb, pb_grpc = fm.load_stubs(ARGS.proto_dir)


class Server:
    """A matchd process on 127.0.0.1, and a stub connected to it."""

    def __init__(self, tmp, *flags, port=0):
        self.port_file = os.path.join(tmp, 'port%d' % time.monotonic_ns())
        self.proc = subprocess.Popen(
            [ARGS.matchd, '--listen', '127.0.0.1:%d' % port, '--port_file', self.port_file]
            + list(flags), stderr=subprocess.DEVNULL)
        # Waiting for a process to start: a bounded poll on the port file.
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not os.path.exists(self.port_file):
            if self.proc.poll() is not None:
                raise RuntimeError('matchd exited with status %d before serving'
                                   % self.proc.returncode)
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError('matchd wrote no port file within %d s' % STARTUP_TIMEOUT)
            time.sleep(0.05)
        with open(self.port_file) as f:
            self.port = int(f.read().strip())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)


class FindMatchTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix='matchd_example_')
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.server = self.start_server()
        self.channel = grpc.insecure_channel('127.0.0.1:%d' % self.server.port)
        self.addCleanup(self.channel.close)
        self.stub = pb_grpc.MatchmakerStub(self.channel)
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)
        self.addCleanup(self.pool.shutdown, wait=True)

    def start_server(self, *flags, port=0):
        server = Server(self.tmp, *flags, port=port)
        self.addCleanup(server.stop)
        return server

    def find(self, queue, players, on_event=None, **kwargs):
        """find_match in a thread; returns a Future."""
        kwargs.setdefault('timeout', TIMEOUT)
        return self.pool.submit(fm.find_match, self.stub, queue, players, on_event, **kwargs)

    def assert_outcome(self, future, outcome, code):
        with self.assertRaises(fm.FindMatchError) as cm:
            future.result(timeout=TIMEOUT + 5)
        self.assertEqual((cm.exception.outcome, cm.exception.code), (outcome, code),
                         cm.exception)
        return cm.exception

    def wait(self, event, what):
        self.assertTrue(event.wait(TIMEOUT), 'timed out waiting for ' + what)

    # (a) Two players are matched.

    def test_two_players_get_the_same_match(self):
        seen = {'alice': [], 'bob': []}

        def recorder(name):
            return lambda ev, stream: seen[name].append((ev.seq, ev.WhichOneof('event')))

        alice = self.find('duel', [('alice', 1500)], recorder('alice'))
        bob = self.find('duel', [('bob', 1510)], recorder('bob'))
        a = alice.result(timeout=TIMEOUT + 5)
        b = bob.result(timeout=TIMEOUT + 5)
        self.assertTrue(a.match_id)
        self.assertEqual(a.match_id, b.match_id)
        self.assertEqual(a.queue, 'duel')
        self.assertEqual({p.id for t in a.teams for p in t.players}, {'alice', 'bob'})
        for name, events in seen.items():
            self.assertEqual(events[0][0], 1, name)
            self.assertEqual(events[-1][1], 'matched', name)
            self.assertEqual([s for s, _ in events], list(range(1, len(events) + 1)), name)
        # `queued` comes first if at all: a ticket matched within the server's
        # queued delay (50 ms) gets the match alone.
        for name, events in seen.items():
            self.assertIn(events[0][1], ('queued', 'matched'), name)
            self.assertNotIn('queued', [kind for _, kind in events[1:]], name)

    # (b) Errors map to outcomes, and are not retried.

    def test_unknown_queue_is_not_found(self):
        e = self.assert_outcome(self.find('no-such-queue', [('alice', 1500)]),
                                fm.OUTCOME_NOT_FOUND, grpc.StatusCode.NOT_FOUND)
        self.assertIsNone(e.ticket_id)
        self.assertFalse(e.retryable)

    def test_invalid_player_is_invalid_request(self):
        self.assert_outcome(self.find('duel', [('', 1500)]),
                            fm.OUTCOME_INVALID_REQUEST, grpc.StatusCode.INVALID_ARGUMENT)
        self.assert_outcome(self.find('duel', [('nan', math.nan)]),
                            fm.OUTCOME_INVALID_REQUEST, grpc.StatusCode.INVALID_ARGUMENT)

    def test_same_player_twice_is_already_waiting_then_cancel(self):
        queued = threading.Event()
        ticket = {}

        def on_event(ev, stream):
            ticket['id'] = ev.ticket_id
            queued.set()

        first = self.find('duel', [('carl', 1500)], on_event)
        self.wait(queued, 'carl queued')
        e = self.assert_outcome(self.find('duel', [('carl', 1500)]),
                                fm.OUTCOME_ALREADY_WAITING, grpc.StatusCode.ALREADY_EXISTS)
        self.assertFalse(e.retryable)
        # CancelTicket ends the first search with CANCELLED, not re-attached.
        self.stub.CancelTicket(pb.CancelTicketRequest(ticket_id=ticket['id']), timeout=TIMEOUT)
        e = self.assert_outcome(first, fm.OUTCOME_CANCELLED, grpc.StatusCode.CANCELLED)
        self.assertEqual(e.ticket_id, ticket['id'])

    def test_timeout_is_no_match_in_time(self):
        self.assert_outcome(self.find('duel', [('dora', 1500)], timeout=0.5),
                            fm.OUTCOME_NO_MATCH_IN_TIME, grpc.StatusCode.DEADLINE_EXCEEDED)

    def test_another_watcher_takes_over(self):
        queued = threading.Event()
        ticket = {}

        def on_event(ev, stream):
            ticket['id'] = ev.ticket_id
            queued.set()

        erin = self.find('duel', [('erin', 1500)], on_event)
        self.wait(queued, 'erin queued')
        watch = self.stub.WatchTicket(pb.WatchTicketRequest(ticket_id=ticket['id'], after_seq=1),
                                      timeout=TIMEOUT)
        self.addCleanup(watch.cancel)
        self.assertEqual(next(watch).WhichOneof('event'), 'searching')
        self.assert_outcome(erin, fm.OUTCOME_TAKEN_OVER, grpc.StatusCode.ABORTED)

    # (c) Re-attach after a dropped stream.

    def test_reattaches_after_dropped_stream(self):
        events = []  # (method, seq, kind) as alice's on_event saw them
        reattached = threading.Event()
        reattaches = []

        def on_event(ev, stream):
            kind = ev.WhichOneof('event')
            events.append((stream.method, ev.seq, kind))
            if kind == 'queued':
                stream.drop()  # as if the connection broke
            elif stream.method == 'WatchTicket':
                reattached.set()

        alice = self.find('duel', [('alice', 1500)], on_event,
                          on_reattach=lambda *a: reattaches.append(a))
        # WatchTicket answers with a fresh `searching` event: alice is back in the pool.
        self.wait(reattached, 'alice to re-attach')
        b = self.find('duel', [('bob', 1510)]).result(timeout=TIMEOUT + 5)
        a = alice.result(timeout=TIMEOUT + 5)
        self.assertEqual(a.match_id, b.match_id)
        self.assertEqual(len(reattaches), 1, reattaches)
        self.assertEqual(reattaches[0][2], grpc.StatusCode.CANCELLED)
        self.assertEqual(events[0], ('FindMatch', 1, 'queued'))
        self.assertEqual(events[1][0::2], ('WatchTicket', 'searching'))
        self.assertEqual(events[-1][0::2], ('WatchTicket', 'matched'))
        self.assertTrue(all(m == 'WatchTicket' for m, _, _ in events[1:]), events)
        seqs = [s for _, s, _ in events]
        self.assertEqual(seqs, sorted(set(seqs)), 'seq must grow, no event twice: %s' % events)

    def test_ticket_lost_when_the_server_restarts(self):
        # The server dies after `queued` and a new one (without the ticket)
        # takes its port: the stream breaks with UNAVAILABLE, the re-attach
        # gets NOT_FOUND and find_match gives up.
        port = self.server.port

        def on_event(ev, stream):
            if ev.WhichOneof('event') == 'queued':
                self.server.stop()
                self.start_server(port=port)

        reattaches = []
        e = self.assert_outcome(
            self.find('duel', [('fred', 1500)], on_event,
                      on_reattach=lambda *a: reattaches.append(a)),
            fm.OUTCOME_TICKET_LOST, grpc.StatusCode.NOT_FOUND)
        self.assertTrue(e.retryable)
        self.assertGreaterEqual(len(reattaches), 1)
        self.assertEqual(reattaches[0][2], grpc.StatusCode.UNAVAILABLE)

    def test_draining_server_gives_up_after_bounded_attempts(self):
        # SIGTERM after `queued`: the stream ends with UNAVAILABLE (draining);
        # every re-attach then finds no server, and find_match gives up after
        # max_attempts. (The re-attaches wait until matchd has exited: one that
        # reaches it while gRPC shuts down gets CANCELLED "CANCELLED".)
        server = self.start_server('--drain_delay', '0s', '--drain_spread', '0s')
        channel = grpc.insecure_channel('127.0.0.1:%d' % server.port)
        self.addCleanup(channel.close)
        stub = pb_grpc.MatchmakerStub(channel)

        def on_event(ev, stream):
            if ev.WhichOneof('event') == 'queued':
                server.proc.send_signal(signal.SIGTERM)

        reattaches = []

        def on_reattach(*args):
            reattaches.append(args)
            self.assertEqual(server.proc.wait(timeout=TIMEOUT), 0)

        policy = fm.Reattach(initial_backoff=0.05, max_attempts=3)
        future = self.pool.submit(fm.find_match, stub, 'duel', [('gina', 1500)], on_event,
                                  timeout=TIMEOUT, reattach=policy, on_reattach=on_reattach)
        e = self.assert_outcome(future, fm.OUTCOME_RETRY_LATER, grpc.StatusCode.UNAVAILABLE)
        self.assertTrue(e.retryable)
        self.assertEqual(len(reattaches), 3, reattaches)
        self.assertIn('draining', reattaches[0][3])

    def test_raising_from_on_event_withdraws_the_ticket(self):
        ticket = {}

        class Stop(Exception):
            pass

        def on_event(ev, stream):
            ticket['id'] = ev.ticket_id
            raise Stop()

        with self.assertRaises(Stop):
            self.find('duel', [('hank', 1500)], on_event).result(timeout=TIMEOUT + 5)
        t = self.stub.GetTicket(pb.GetTicketRequest(ticket_id=ticket['id']), timeout=TIMEOUT)
        self.assertEqual(t.state, pb.Ticket.CANCELLED)


def main():
    global ARGS
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('--matchd', required=True, help='path to the matchd binary')
    parser.add_argument('--proto_dir', required=True, help='dir holding matchmaking/v1/*.proto')
    ARGS, rest = parser.parse_known_args()
    ARGS.matchd = os.path.abspath(ARGS.matchd)
    ARGS.proto_dir = os.path.abspath(ARGS.proto_dir)
    unittest.main(argv=[sys.argv[0]] + rest)


if __name__ == '__main__':
    main()
