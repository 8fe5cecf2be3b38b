#!/usr/bin/env bash
# Runs matchd's performance suite: every scenario against bench/noop_server
# (the logic-free floor) and against matchd, back to back, each run on a fresh
# server process; prints Markdown tables (see docs/PERFORMANCE.md).
#
#   bench/run_perf.sh [--build DIR] [--smoke] [--out FILE] [--keep DIR]
#
#   --build DIR  CMake build tree holding service/matchd, bench/noop_server and
#                bench/matchload (default: build-bench). Nothing is built here.
#   --smoke      every scenario for about a second with tiny counts (CI: checks
#                that the tools work, not speed).
#   --out FILE   also write the tables to FILE.
#   --keep DIR   keep the raw results (one JSON object per run) and logs in DIR.
#
# Environment: PERF_HOLD overrides the number of held streams (default 100000;
# 100 with --smoke).
#
# Servers run with one event loop each (--threads 1) on 127.0.0.1 with port 0;
# matchload uses one client thread and 4 connections. On a 2-core machine that
# is one core for the server and one for the client.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="$ROOT/build-bench"
SMOKE=0
OUT=""
KEEP=""
while [ $# -gt 0 ]; do
  case "$1" in
    --build|--out|--keep)
      [ $# -ge 2 ] || { echo "run_perf.sh: $1 needs a value" >&2; exit 2; } ;;
  esac
  case "$1" in
    --build) BUILD="$2"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --keep) KEEP="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "run_perf.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -d "$BUILD" ] || { echo "run_perf.sh: no build directory $BUILD; build it first (see docs/PERFORMANCE.md)" >&2; exit 2; }
BUILD="$(cd "$BUILD" && pwd)"
MATCHD="$BUILD/service/matchd"
NOOP="$BUILD/bench/noop_server"
LOAD="$BUILD/bench/matchload"
CONFIG="$ROOT/bench/bench_config.json"
for bin in "$MATCHD" "$NOOP" "$LOAD"; do
  if [ ! -x "$bin" ]; then
    echo "run_perf.sh: $bin is missing; build it first:" >&2
    echo "  cmake --build $BUILD -j2 --target matchd noop_server matchload" >&2
    exit 2
  fi
done
PYTHON="$(command -v python3 || true)"
[ -x /usr/bin/python3 ] && PYTHON=/usr/bin/python3
[ -n "$PYTHON" ] || { echo "run_perf.sh: python3 is needed for the tables" >&2; exit 2; }

if [ -n "$KEEP" ]; then
  mkdir -p "$KEEP"
  WORK="$(cd "$KEEP" && pwd)"
else
  WORK="$(mktemp -d /tmp/matchd_perf.XXXXXX)"
fi
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"

# Scenario sizes.
if [ "$SMOKE" = 1 ]; then
  HOLD="${PERF_HOLD:-100}"
  SAT=(--in_flight 32 --connections 4 --warmup 0.5s --duration 1s)
  HALF_RATE_DEFAULT=200
  LAT=(--connections 4 --warmup 0.5s --duration 1s)
  WAIT_RATE=100
  WAIT=(--connections 4 --wait 0.5s --warmup 1s --duration 1s)
  HOLD_TIMEOUT=30s
else
  HOLD="${PERF_HOLD:-100000}"
  SAT=(--in_flight 256 --connections 4 --warmup 1s --duration 5s)
  HALF_RATE_DEFAULT=1000
  LAT=(--connections 4 --warmup 1s --duration 5s)
  WAIT_RATE=1000
  WAIT=(--connections 4 --wait 2s --warmup 3.5s --duration 4s)
  HOLD_TIMEOUT=120s
fi

# matchd's drain flags, where this matchd has them: stop at once, no delay.
MATCHD_STOP_FLAGS=()
# (Captured first: with pipefail, grep -q closing the pipe early would fail it.)
MATCHD_FLAGS_HELP="$("$MATCHD" --helpfull 2>&1 || true)"
if grep -q -- '--drain_delay' <<<"$MATCHD_FLAGS_HELP"; then
  MATCHD_STOP_FLAGS=(--drain_delay 0s --drain_spread 0s --drain_timeout 1s)
fi

SERVER_PID=""
SERVER_PORT=""
FAILURES=0

stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  local pid="$SERVER_PID"
  SERVER_PID=""
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  echo "run_perf.sh: server $pid did not stop within 15 s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  stop_server
  [ -n "$KEEP" ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server noop|noop-health|matchd LOG: sets SERVER_PID and SERVER_PORT.
# noop-health is the no-op plus gRPC's default health service (which matchd
# serves): it shows what that service alone costs.
start_server() {
  local kind="$1" log="$2" port_file="$WORK/port"
  rm -f "$port_file"
  if [ "$kind" = noop ]; then
    "$NOOP" --listen 127.0.0.1:0 --port_file "$port_file" --threads 1 2>"$log" &
  elif [ "$kind" = noop-health ]; then
    "$NOOP" --listen 127.0.0.1:0 --port_file "$port_file" --threads 1 \
      --default_health_service 2>"$log" &
  else
    # No heartbeats: held streams stay silent, as in the no-op server.
    "$MATCHD" --listen 127.0.0.1:0 --port_file "$port_file" --threads 1 --config "$CONFIG" \
      --heartbeat 3600s --max_waiting_tickets 1000000 "${MATCHD_STOP_FLAGS[@]}" 2>"$log" &
  fi
  SERVER_PID=$!
  for _ in $(seq 1 200); do
    if [ -s "$port_file" ]; then
      SERVER_PORT="$(cat "$port_file")"
      return 0
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "run_perf.sh: $kind did not start; its log:" >&2
  cat "$log" >&2
  SERVER_PID=""
  return 1
}

# run SCENARIO SERVER [matchload flags...]: one run on a fresh server; appends
# its JSON report (or a failure record) to $RESULTS.
run() {
  local scenario="$1" kind="$2"
  shift 2
  local tag="${scenario}_${kind}"
  local log="$WORK/$tag.server.log"
  local extra=()
  if [ "$kind" != matchd ]; then
    # The no-op pairs per queue name and sends nothing while a call waits.
    extra=(--pair_by queue --hold_ready barrier)
  else
    extra=(--pair_by rating --hold_ready queued)
  fi
  echo "== $scenario / $kind: matchload $*" >&2
  if ! start_server "$kind" "$log"; then
    echo "{\"label\":\"$scenario/$kind\",\"ok\":false,\"failure\":\"server did not start\"}" \
      >> "$RESULTS"
    FAILURES=$((FAILURES + 1))
    return 0
  fi
  local rc=0
  "$LOAD" --target "127.0.0.1:$SERVER_PORT" --server_pid "$SERVER_PID" --json \
    --label "$scenario/$kind" --hold_timeout "$HOLD_TIMEOUT" "${extra[@]}" "$@" \
    > "$WORK/$tag.json" 2> "$WORK/$tag.load.log" || rc=$?
  stop_server
  if [ -s "$WORK/$tag.json" ]; then
    cat "$WORK/$tag.json" >> "$RESULTS"
  else
    echo "{\"label\":\"$scenario/$kind\",\"ok\":false,\"failure\":\"matchload exited $rc\"}" \
      >> "$RESULTS"
  fi
  if [ "$rc" != 0 ]; then
    FAILURES=$((FAILURES + 1))
    echo "run_perf.sh: $scenario / $kind failed (exit $rc):" >&2
    tail -5 "$WORK/$tag.load.log" >&2
    echo "-- server log (tail):" >&2
    tail -5 "$log" >&2
  fi
}

# tickets/s of a finished run, or empty.
rate_of() {
  "$PYTHON" -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("label") == sys.argv[2] and r.get("ok"):
        print(int(r["tickets_per_s"]))' "$RESULTS" "$1"
}

# (a) 1v1 saturation, closed loop.
for kind in noop noop-health matchd; do run sat "$kind" --queue duel "${SAT[@]}"; done
# (b) the same with $HOLD streams held in another queue; its hold phase, on a
# fresh server before any load, gives (e) memory per waiting ticket. The held
# streams have connections of their own: on the load's, the load generator's
# cost per ticket grows with the streams held there until it, not the server,
# is the bottleneck.
for kind in noop matchd; do
  run hold "$kind" --queue duel --hold "$HOLD" --hold_queue hold --hold_connections 4 "${SAT[@]}"
done
# (c) notify latency at half of matchd's saturation rate (the same offered
# rate for both servers): in an unrated 1v1 queue, where every match forms on
# the arrival that completes it, and in the rated duel, where some form later,
# when a widening window comes to cover tickets already waiting.
# The smoke run offers a small fixed rate: it checks that the scenario works,
# not how fast, and it shares the machine with the other tests.
if [ "$SMOKE" = 1 ]; then
  HALF_RATE="$HALF_RATE_DEFAULT"
else
  HALF_RATE="$(rate_of sat/matchd)"
  HALF_RATE=$(( ${HALF_RATE:-$((2 * HALF_RATE_DEFAULT))} / 2 ))
fi
for kind in noop matchd; do
  run latency "$kind" --queue duel-fill --rate "$HALF_RATE" "${LAT[@]}"
done
run latency-rated matchd --queue duel --rate "$HALF_RATE" "${LAT[@]}"
# (d) held stream vs polling, each pair matched about 2 s after its first ticket.
for kind in noop matchd; do
  run wait-stream "$kind" --queue wait --rate "$WAIT_RATE" --mode stream "${WAIT[@]}"
  for interval in 1s 500ms 100ms; do
    run "wait-poll-$interval" "$kind" --queue wait --rate "$WAIT_RATE" --mode poll \
      --poll_interval "$interval" "${WAIT[@]}"
  done
done

TABLES="$("$PYTHON" - "$RESULTS" "$HOLD" "$SMOKE" <<'PY'
import json, sys

results, hold, smoke = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
runs = {}
for line in open(results):
    r = json.loads(line)
    scenario, _, server = r["label"].partition("/")
    runs[(scenario, server)] = r

def get(scenario, server):
    r = runs.get((scenario, server))
    return r if r and r.get("ok") else None

def num(v, fmt="{:.1f}"):
    return "–" if v is None or v < 0 else fmt.format(v)

def ratio(a, b):
    return "–" if a is None or b is None or b <= 0 or a < 0 else "{:.2f}×".format(a / b)

out = []
if smoke:
    out.append("_Smoke run: tiny counts, about a second per run; figures are not meaningful._\n")
wait_s = next((r["wait_s"] for (s, _), r in runs.items() if s == "wait-stream" and "wait_s" in r),
              2.0)
names = [
    ("sat", "(a) 1v1 saturation, closed loop"),
    ("hold", "(b) as (a), {} streams held in another queue".format(hold)),
    ("latency", "(c) 1v1 unrated at half of matchd's (a) rate"),
    ("latency-rated", "(c) as (c), rated duel (matches also form by widening)"),
    ("wait-stream", "(d) held stream, matched ~{:g} s after creation".format(wait_s)),
    ("wait-poll-1s", "(d) polling every 1 s"),
    ("wait-poll-500ms", "(d) polling every 500 ms"),
    ("wait-poll-100ms", "(d) polling every 100 ms"),
]
out.append("| Scenario | Server | tickets/s | server µs/ticket | vs no-op | client µs/ticket "
           "| calls/ticket | notify p50 / p99 / max ms | server KiB/held |")
out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for key, title in names:
    for server in ("noop", "noop-health", "matchd"):
        r = runs.get((key, server))
        if r is None:
            continue
        if not r.get("ok"):
            out.append("| {} | {} | FAILED: {} | | | | | | |".format(title, server,
                                                                 r.get("failure", "?")))
            continue
        base = get(key, "noop") or (get("latency", "noop") if key == "latency-rated" else None)
        lat = r["latency_ms"]
        # An open loop that fell behind drops starts (matchload); say how many.
        rate = "{:.0f}".format(r["tickets_per_s"])
        if r.get("dropped", 0) > 0 and r.get("started", 0) > 0:
            rate += " ({:.1f} % of starts dropped)".format(
                100.0 * r["dropped"] / (r["started"] + r["dropped"]))
        out.append("| {} | {} | {} | {} | {} | {} | {:.2f} | {} / {} / {} | {} |".format(
            title, server, rate, num(r["server_us_per_ticket"]),
            ratio(r["server_us_per_ticket"], base["server_us_per_ticket"] if base else None),
            num(r["client_us_per_ticket"]), r["rpcs_per_ticket"],
            num(lat["p50"], "{:.2f}"), num(lat["p99"], "{:.2f}"), num(lat["max"], "{:.1f}"),
            num(r["server_rss_kib_per_hold"], "{:.2f}") if r["hold"] else "–"))

out.append("")
out.append("| Target | no-op | matchd | matchd / no-op |")
out.append("|---|---:|---:|---:|")
def row(label, f, fmt="{:.1f}"):
    a, b = f("noop"), f("matchd")
    out.append("| {} | {} | {} | {} |".format(label, num(a, fmt), num(b, fmt), ratio(b, a)))
def field(scenario, key):
    def f(server):
        r = get(scenario, server)
        return r[key] if r else None
    return f
row("Server CPU per matched 1v1 ticket at saturation, µs", field("sat", "server_us_per_ticket"))
h, n = get("sat", "noop-health"), get("sat", "noop")
if h and n:
    out.append("| … added by gRPC's default health service (no-op with it − without), µs "
               "| +{:.1f} | – | |".format(h["server_us_per_ticket"] - n["server_us_per_ticket"]))
def hold_share(server):
    a, b = get("sat", server), get("hold", server)
    return 100.0 * b["tickets_per_s"] / a["tickets_per_s"] if a and b else None
row("tickets/s with {} held, % of none held (target ≥ 90 %)".format(hold), hold_share, "{:.0f} %")
row("Memory per waiting ticket (server RSS), KiB", field("hold", "server_rss_kib_per_hold"),
    "{:.2f}")
def p99(server):
    r = get("latency", server)
    return r["latency_ms"]["p99"] if r else None
row("Notify latency p99 at half saturation (unrated 1v1), ms", p99, "{:.2f}")
r = get("latency-rated", "matchd")
if r:
    out.append("| … in the rated duel, ms | – | {:.2f} | |".format(r["latency_ms"]["p99"]))

out.append("")
out.append("Server µs per matched ticket, each ticket matched ~{:g} s after creation "
           "(calls per ticket in brackets):".format(wait_s))
out.append("")
out.append("| Server | held stream | poll 1 s | poll 500 ms | poll 100 ms |")
out.append("|---|---:|---:|---:|---:|")
for server in ("noop", "matchd"):
    cells = []
    for key in ("wait-stream", "wait-poll-1s", "wait-poll-500ms", "wait-poll-100ms"):
        r = get(key, server)
        cells.append("{:.0f} ({:.1f})".format(r["server_us_per_ticket"], r["rpcs_per_ticket"])
                     if r else "–")
    out.append("| {} | {} |".format(server, " | ".join(cells)))
print("\n".join(out))
PY
)"
echo
echo "$TABLES"
[ -z "$OUT" ] || echo "$TABLES" > "$OUT"
if [ "$FAILURES" != 0 ]; then
  echo "run_perf.sh: $FAILURES run(s) failed; logs in $WORK (use --keep DIR to keep them)" >&2
  exit 1
fi
