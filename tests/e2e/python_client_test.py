#!/usr/bin/env python3
"""End-to-end test of matchd through an independent client: Python grpcio.

Run as:
  python3 tests/e2e/python_client_test.py --matchd PATH/TO/matchd \
      --proto_dir /work/main/proto [unittest args...]

Stubs are generated from the .proto at test time with grpc_tools.protoc, so
the test speaks the published contract rather than sharing code with the
server. Each test starts its own matchd on a free port. Apart from waiting for
the port file (process start-up), the test synchronizes on stream events and
RPC replies only; it never sleeps.
"""

import argparse
import importlib
import json
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc
import grpc_tools
from grpc_tools import protoc

RPC_TIMEOUT = 10  # seconds, on every RPC: a broken server fails, never hangs
STARTUP_TIMEOUT = 20  # seconds for matchd to write its port file
EXIT_TIMEOUT = 20  # seconds for matchd to exit after SIGTERM

ARGS = None  # --matchd, --proto_dir
pb = None  # matchmaking_pb2
pb_grpc = None  # matchmaking_pb2_grpc
_stub_dir = None


def _well_known_types_include():
    """The include dir holding google/protobuf/*.proto."""
    candidates = [os.path.join(os.path.dirname(grpc_tools.__file__), '_proto')]
    try:
        import importlib.resources as resources
        candidates.append(str(resources.files('grpc_tools') / '_proto'))
    except (ImportError, AttributeError, TypeError):
        pass
    candidates.append('/usr/include')  # Debian's libprotobuf-dev
    for path in candidates:
        if os.path.exists(os.path.join(path, 'google', 'protobuf', 'duration.proto')):
            return path
    raise RuntimeError('no google/protobuf/duration.proto in any of %s' % candidates)


def setUpModule():
    global pb, pb_grpc, _stub_dir
    _stub_dir = tempfile.mkdtemp(prefix='matchd_e2e_stubs_')
    rc = protoc.main([
        'grpc_tools.protoc',
        '-I', ARGS.proto_dir,
        '-I', _well_known_types_include(),
        '--python_out', _stub_dir,
        '--grpc_python_out', _stub_dir,
        os.path.join(ARGS.proto_dir, 'matchmaking', 'v1', 'matchmaking.proto'),
    ])
    if rc != 0:
        raise RuntimeError('grpc_tools.protoc failed with status %d' % rc)
    sys.path.insert(0, _stub_dir)
    pb = importlib.import_module('matchmaking.v1.matchmaking_pb2')
    pb_grpc = importlib.import_module('matchmaking.v1.matchmaking_pb2_grpc')


def tearDownModule():
    if _stub_dir:
        shutil.rmtree(_stub_dir, ignore_errors=True)


def player(pid, rating=0.0):
    return pb.Player(id=pid, rating=rating)


class ServerFixture(unittest.TestCase):
    """A matchd of its own for each test, and a client channel to it."""

    # Flags added to the server's, by subclasses.
    EXTRA_FLAGS = ()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix='matchd_e2e_')
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        port_file = os.path.join(self.tmp, 'port')
        self.stderr_path = os.path.join(self.tmp, 'stderr')
        self.stderr = open(self.stderr_path, 'w')
        self.addCleanup(self.stderr.close)
        self.proc = subprocess.Popen([
            ARGS.matchd, '--listen', '127.0.0.1:0', '--port_file', port_file,
            '--heartbeat', '1s', '--drain_delay', '1s', '--drain_spread', '1s'
        ] + list(self.EXTRA_FLAGS), stderr=self.stderr)
        self.port = None
        self.addCleanup(self._stop_server)
        # Waiting for a process to start: a bounded poll on the port file,
        # which matchd writes atomically once it is serving.
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not os.path.exists(port_file):
            if self.proc.poll() is not None:
                self.fail('matchd exited with status %d before serving' % self.proc.returncode)
            if time.monotonic() > deadline:
                self.fail('matchd wrote no port file within %d s' % STARTUP_TIMEOUT)
            time.sleep(0.05)
        with open(port_file) as f:
            port = int(f.read().strip())
        self.port = port
        self.channel = grpc.insecure_channel('127.0.0.1:%d' % port)
        self.addCleanup(self.channel.close)
        self.stub = pb_grpc.MatchmakerStub(self.channel)

    def _stop_server(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    # Helpers.

    def find(self, queue, *players):
        return self.stub.FindMatch(pb.FindMatchRequest(queue=queue, players=players),
                                   timeout=RPC_TIMEOUT)

    def assert_queued(self, call, queue):
        ev = next(call)
        self.assertEqual(ev.WhichOneof('event'), 'queued', ev)
        self.assertEqual(ev.seq, 1)
        self.assertEqual(ev.queued.queue, queue)
        self.assertEqual(len(ev.ticket_id), 32)
        return ev

    def assert_stream_error(self, call, code):
        with self.assertRaises(grpc.RpcError) as cm:
            for ev in call:
                self.fail('expected %s before any event, got %s' % (code, ev))
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        return cm.exception

    def assert_rpc_error(self, rpc, request, code):
        with self.assertRaises(grpc.RpcError) as cm:
            rpc(request, timeout=RPC_TIMEOUT)
        self.assertEqual(cm.exception.code(), code, cm.exception.details())

    def finish_matched(self, call, queued):
        """Reads the rest of a FindMatch stream: `searching`* then `matched`, then OK."""
        events = list(call)  # raises RpcError unless the call ends OK
        self.assertEqual(call.code(), grpc.StatusCode.OK)
        self.assertTrue(events, 'stream ended without a matched event')
        seq = queued.seq
        for ev in events:
            seq += 1
            self.assertEqual(ev.seq, seq, 'seq must increase by one: %s' % ev)
            self.assertEqual(ev.ticket_id, queued.ticket_id)
        for ev in events[:-1]:
            self.assertEqual(ev.WhichOneof('event'), 'searching', ev)
        self.assertEqual(events[-1].WhichOneof('event'), 'matched', events[-1])
        return events[-1].matched.match


class MatchdTest(ServerFixture):

    def test_list_queues(self):
        response = self.stub.ListQueues(pb.ListQueuesRequest(), timeout=RPC_TIMEOUT)
        queues = {q.name: q for q in response.queues}
        self.assertLessEqual({'duel', 'squad', 'ffa', 'casual'}, set(queues))
        duel = queues['duel']
        self.assertEqual((duel.team_count, duel.team_size, duel.rated), (2, 1, True))
        self.assertFalse(queues['casual'].rated)

    def test_two_find_match_streams_are_matched(self):
        alice = self.find('duel', player('alice', 1500))
        alice_queued = self.assert_queued(alice, 'duel')
        # Bob completes the match on arrival: his stream is `matched` alone.
        bob = self.find('duel', player('bob', 1510))
        bob_events = list(bob)
        self.assertEqual(bob.code(), grpc.StatusCode.OK)
        self.assertEqual([(ev.seq, ev.WhichOneof('event')) for ev in bob_events], [(1, 'matched')])
        bob_ticket = bob_events[0].ticket_id
        self.assertNotEqual(alice_queued.ticket_id, bob_ticket)

        a = self.finish_matched(alice, alice_queued)
        b = bob_events[0].matched.match
        self.assertEqual(a.match_id, b.match_id)
        self.assertEqual(a.queue, 'duel')
        self.assertCountEqual(a.ticket_ids, [alice_queued.ticket_id, bob_ticket])
        team_of = {}
        for i, team in enumerate(a.teams):
            for p in team.players:
                team_of[p.id] = i
        self.assertEqual(set(team_of), {'alice', 'bob'})
        self.assertNotEqual(team_of['alice'], team_of['bob'])
        self.assertEqual(len(a.teams), 2)

    def test_invalid_arguments(self):
        self.assert_stream_error(self.find('duel', player('', 1500)),
                                 grpc.StatusCode.INVALID_ARGUMENT)
        self.assert_stream_error(self.find('duel', player('nan', math.nan)),
                                 grpc.StatusCode.INVALID_ARGUMENT)
        self.assert_rpc_error(
            self.stub.CreateTicket,
            pb.CreateTicketRequest(queue='duel', players=[player('nan', math.nan)]),
            grpc.StatusCode.INVALID_ARGUMENT)

    def test_a_malformed_request_is_invalid_argument(self):
        # Bytes that are no protobuf message at all (a varint that never ends).
        for method in ('CreateTicket', 'GetTicket', 'CancelTicket', 'ListQueues', 'FindMatch',
                       'WatchTicket'):
            path = '/matchmaking.v1.Matchmaker/' + method
            if method in ('FindMatch', 'WatchTicket'):
                stream = self.channel.unary_stream(path)
                rpc = lambda req, timeout, stream=stream: list(stream(req, timeout=timeout))
            else:
                rpc = self.channel.unary_unary(path)
            with self.assertRaises(grpc.RpcError) as cm:
                rpc(b'\xff\xff\xff', timeout=RPC_TIMEOUT)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT, method)
            self.assertIn('request is not a valid', cm.exception.details())

    def test_invalid_utf8_is_invalid_argument_and_every_log_line_is_json(self):
        # CreateTicketRequest{queue: "duel", players: [{id: b"\xc3\x28"}]}: not UTF-8,
        # which protobuf itself reports through its log.
        request = b'\x0a\x04duel\x12\x04\x0a\x02\xc3\x28'
        rpc = self.channel.unary_unary('/matchmaking.v1.Matchmaker/CreateTicket')
        with self.assertRaises(grpc.RpcError) as cm:
            rpc(request, timeout=RPC_TIMEOUT)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.proc.wait(timeout=EXIT_TIMEOUT), 0)
        with open(self.stderr_path) as f:
            lines = [line for line in f.read().splitlines() if line]
        self.assertTrue(lines)
        for line in lines:
            self.assertIsInstance(json.loads(line), dict, line)

    def test_unknown_queue(self):
        self.assert_stream_error(self.find('no-such-queue', player('alice', 1500)),
                                 grpc.StatusCode.NOT_FOUND)

    def test_same_player_twice_is_already_exists(self):
        first = self.find('duel', player('carl', 1500))
        self.assert_queued(first, 'duel')
        self.assert_stream_error(self.find('duel', player('carl', 1500)),
                                 grpc.StatusCode.ALREADY_EXISTS)
        first.cancel()

    def test_polling_create_get_cancel(self):
        ticket = self.stub.CreateTicket(
            pb.CreateTicketRequest(queue='casual', players=[player('dora'), player('eve')]),
            timeout=RPC_TIMEOUT)
        self.assertEqual(ticket.state, pb.Ticket.QUEUED)
        self.assertEqual(ticket.queue, 'casual')
        got = self.stub.GetTicket(pb.GetTicketRequest(ticket_id=ticket.ticket_id),
                                  timeout=RPC_TIMEOUT)
        self.assertEqual(got.state, pb.Ticket.QUEUED)
        self.assertEqual([p.id for p in got.players], ['dora', 'eve'])
        cancelled = self.stub.CancelTicket(pb.CancelTicketRequest(ticket_id=ticket.ticket_id),
                                           timeout=RPC_TIMEOUT)
        self.assertEqual(cancelled.state, pb.Ticket.CANCELLED)
        got = self.stub.GetTicket(pb.GetTicketRequest(ticket_id=ticket.ticket_id),
                                  timeout=RPC_TIMEOUT)
        self.assertEqual(got.state, pb.Ticket.CANCELLED)
        self.assert_rpc_error(self.stub.CancelTicket,
                              pb.CancelTicketRequest(ticket_id=ticket.ticket_id),
                              grpc.StatusCode.FAILED_PRECONDITION)

    def test_cancelled_find_match_withdraws_the_ticket(self):
        call = self.find('duel', player('fay', 1500))
        ticket_id = self.assert_queued(call, 'duel').ticket_id
        call.cancel()
        # No reply tells the client that the server has processed the
        # cancellation, so QUEUED may be seen briefly; ask again (bounded,
        # each ask is a round trip) until the ticket leaves QUEUED.
        states = []
        deadline = time.monotonic() + RPC_TIMEOUT
        while True:
            t = self.stub.GetTicket(pb.GetTicketRequest(ticket_id=ticket_id), timeout=RPC_TIMEOUT)
            states.append(pb.Ticket.State.Name(t.state))
            self.assertNotEqual(t.state, pb.Ticket.MATCHED)
            if t.state != pb.Ticket.QUEUED or time.monotonic() > deadline:
                break
        self.assertIn(t.state, (pb.Ticket.DETACHED, pb.Ticket.CANCELLED), states)
        # The ticket is out of the pool: a compatible newcomer waits alone.
        gus = self.find('duel', player('gus', 1500))
        self.assertEqual(self.assert_queued(gus, 'duel').queued.players_waiting, 1)
        gus.cancel()
        t = self.stub.GetTicket(pb.GetTicketRequest(ticket_id=ticket_id), timeout=RPC_TIMEOUT)
        self.assertIn(t.state, (pb.Ticket.DETACHED, pb.Ticket.CANCELLED))

    def health(self, service):
        """grpc.health.v1.Health/Check, hand-encoded (no health stubs here)."""
        check = self.channel.unary_unary('/grpc.health.v1.Health/Check')
        reply = check(b'\x0a' + bytes([len(service)]) + service.encode(), timeout=RPC_TIMEOUT)
        return reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0

    def test_sigterm_drains_open_streams_and_exits_zero(self):
        self.assertEqual(self.health('matchmaking.v1.Matchmaker'), 1)  # SERVING
        call = self.find('squad', player('hal', 1500))
        self.assert_queued(call, 'squad')
        self.proc.send_signal(signal.SIGTERM)
        # Readiness goes NOT_SERVING (once the signal is handled); liveness stays.
        deadline = time.monotonic() + RPC_TIMEOUT
        while self.health('matchmaking.v1.Matchmaker') != 2 and time.monotonic() < deadline:
            pass
        self.assertEqual(self.health('matchmaking.v1.Matchmaker'), 2)  # NOT_SERVING
        self.assertEqual(self.health('liveness'), 1)
        with self.assertRaises(grpc.RpcError) as refused:
            next(self.find('squad', player('ivy', 1500)))
        self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAVAILABLE)
        with self.assertRaises(grpc.RpcError) as cm:
            for ev in call:  # heartbeats may still come first
                self.assertEqual(ev.WhichOneof('event'), 'searching', ev)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE,
                         cm.exception.details())
        self.assertIn('draining', cm.exception.details())
        self.assertEqual(self.proc.wait(timeout=EXIT_TIMEOUT), 0)
        # The port file named a port no longer served: it is gone.
        self.assertFalse(os.path.exists(os.path.join(self.tmp, 'port')))


class RawHttp2Stream:
    """One FindMatch on a connection of its own, spoken in raw HTTP/2 by a
    caller that never reads: its flow-control window is 0, so the server can
    send it no event. It answers pings (the connection stays alive) and
    records the streams the server resets."""

    def __init__(self, port, request):
        self.sock = socket.create_connection(('127.0.0.1', port))
        self.lock = threading.Lock()
        self.reset = threading.Event()
        settings = struct.pack('>HI', 0x4, 0)  # SETTINGS_INITIAL_WINDOW_SIZE = 0
        self.send(b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' + self.frame(0x4, 0, 0, settings))
        headers = b''.join(self.literal(k, v) for k, v in (
            (':method', 'POST'), (':scheme', 'http'),
            (':path', '/matchmaking.v1.Matchmaker/FindMatch'), (':authority', 'matchd'),
            ('content-type', 'application/grpc'), ('te', 'trailers')))
        body = b'\x00' + struct.pack('>I', len(request)) + request
        self.send(self.frame(0x1, 0x4, 1, headers) + self.frame(0x0, 0x1, 1, body))
        self.reader = threading.Thread(target=self.read_frames, daemon=True)
        self.reader.start()

    @staticmethod
    def frame(kind, flags, stream, payload):
        return struct.pack('>I', len(payload))[1:] + bytes([kind, flags]) + \
            struct.pack('>I', stream) + payload

    @staticmethod
    def literal(name, value):  # HPACK: literal, not indexed, new name; all short
        name, value = name.encode(), value.encode()
        return bytes([0, len(name)]) + name + bytes([len(value)]) + value

    def send(self, data):
        with self.lock:
            self.sock.sendall(data)

    def read_exactly(self, n):
        data = b''
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def read_frames(self):
        try:
            while True:
                head = self.read_exactly(9)
                length = int.from_bytes(head[:3], 'big')
                kind, flags = head[3], head[4]
                stream = int.from_bytes(head[5:9], 'big') & 0x7fffffff
                payload = self.read_exactly(length)
                if kind == 0x4 and not flags & 0x1:  # SETTINGS: acknowledge
                    self.send(self.frame(0x4, 0x1, 0, b''))
                elif kind == 0x6 and not flags & 0x1:  # PING: answer
                    self.send(self.frame(0x6, 0x1, 0, payload))
                elif kind == 0x3 and stream == 1:  # RST_STREAM
                    self.reset.set()
        except (EOFError, OSError):
            pass

    def close(self):
        self.sock.close()


class StalledReaderTest(ServerFixture):
    """A caller whose connection takes no events loses its stream after
    keepalive_time + keepalive_timeout (here 2 s) to 1.5 times that, as one
    that does not answer pings would: its ticket leaves the pool instead of
    being matched with nobody to tell."""

    EXTRA_FLAGS = ('--keepalive_time', '1s', '--keepalive_timeout', '1s',
                   '--heartbeat', '100ms')

    def waiting(self, queue):
        """Tickets waiting in `queue`, or None if the call found the channel's
        connection closed: with keepalive_timeout 1 s the server closes an idle
        client's connection before the client's poller answers its ping."""
        try:
            reply = self.stub.ListQueues(pb.ListQueuesRequest(), timeout=RPC_TIMEOUT)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            return None
        return {q.name: q.tickets_waiting for q in reply.queues}[queue]

    def test_a_stream_whose_caller_reads_nothing_is_cancelled(self):
        request = pb.FindMatchRequest(queue='duel', players=[player('stalled', 1500)])
        raw = RawHttp2Stream(self.port, request.SerializeToString())
        self.addCleanup(raw.close)
        # Bounded waits on the server's state (no sleeping for the outcome).
        deadline = time.monotonic() + RPC_TIMEOUT
        while self.waiting('duel') != 1:
            self.assertLess(time.monotonic(), deadline, 'the raw ticket never joined duel')
            time.sleep(0.05)
        self.assertTrue(raw.reset.wait(timeout=30), 'the stalled stream was not reset')
        # The ticket leaves the pool as the reset goes out; poll (bounded)
        # until the count shows it.
        deadline = time.monotonic() + RPC_TIMEOUT
        while self.waiting('duel') != 0:
            self.assertLess(time.monotonic(), deadline, 'the stalled ticket stayed in the pool')
            time.sleep(0.05)


class MatchdCommandLineTest(unittest.TestCase):
    """The binary's own checks, before and around serving."""

    def run_matchd(self, *args):
        return subprocess.run([ARGS.matchd, '--listen', '127.0.0.1:0'] + list(args),
                              capture_output=True, text=True, timeout=EXIT_TIMEOUT)

    def test_a_stray_argument_is_bad_usage(self):
        # A forgotten --config must not serve the embedded queues instead.
        done = self.run_matchd('queues.json')
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn('unexpected argument \\"queues.json\\"', done.stderr)

    def test_a_bad_flag_value_is_bad_usage(self):
        done = self.run_matchd('--heartbeat', '1ns')
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn('heartbeat interval must be in [100ms, 1h]', done.stderr)
        done = self.run_matchd('--drain_delay', '-1s')
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn('bad --drain_delay', done.stderr)

    def test_an_unknown_flag_or_unparsable_value_is_bad_usage(self):
        done = self.run_matchd('--thread', '2')
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn('unknown flag --thread', done.stderr)
        done = self.run_matchd('--threads=two')
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn("Illegal value 'two' specified for flag 'threads'", done.stderr)

    def test_help_lists_the_flags_and_exits_zero(self):
        done = self.run_matchd('--help')
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn('--drain_timeout (default: ', done.stdout)
        self.assertNotIn('--flagfile', done.stdout)

    def test_check_config_validates_without_serving(self):
        tmp = tempfile.mkdtemp(prefix='matchd_e2e_')
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        good = os.path.join(tmp, 'good.json')
        with open(good, 'w') as f:
            f.write('{"queues": [{"name": "duel", "teamCount": 2, "teamSize": 1}]}')
        done = self.run_matchd('--check_config', '--config', good)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout, good + ': valid, 1 queue: duel\n')
        self.assertNotIn('serving', done.stderr)
        bad = os.path.join(tmp, 'bad.json')
        with open(bad, 'w') as f:
            f.write('{"queues": [{"name": "duel", "teamCount": 2}]}')
        done = self.run_matchd('--check_config', '--config', bad)
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn('teamSize is required', done.stderr)
        done = self.run_matchd('--check_config')
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertTrue(done.stdout.startswith('embedded default: valid, 4 queues: duel '),
                        done.stdout)

    def test_version_names_the_build_and_exits_zero(self):
        done = self.run_matchd('--version')
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertRegex(
            done.stdout,
            r'^matchd \d+\.\d+\.\d+ \(gRPC \d+\.\d+\.\d+ from \S+, protobuf \d+\.\d+\.\d+\)\n$')
        done = self.run_matchd('--version=1')
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn('--version takes no value', done.stderr)

    def test_a_port_file_that_cannot_be_written_stops_the_server(self):
        tmp = tempfile.mkdtemp(prefix='matchd_e2e_')
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        done = self.run_matchd('--port_file', os.path.join(tmp, 'missing', 'port'))
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertIn('cannot write --port_file', done.stderr)
        self.assertEqual(os.listdir(tmp), [])


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
