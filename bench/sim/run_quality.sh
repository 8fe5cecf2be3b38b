#!/usr/bin/env bash
# Reproduces docs/QUALITY.md: the frontier sweeps (CSV + SVG in docs/quality/)
# and the target runs, all seeded (same seed, same matches).
#
#   bench/sim/run_quality.sh [--build DIR] [--out DIR]
#
# About three minutes on one core; the offline optimum takes most of it.
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
build="$here/build"
out="$here/docs/quality"
while [[ $# -gt 0 ]]; do
  if [[ ( "$1" == --build || "$1" == --out ) && $# -lt 2 ]]; then
    echo "run_quality.sh: $1 needs a value" >&2; exit 2
  fi
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--out DIR]" >&2; exit 2 ;;
  esac
done
sim="$build/bench/sim/matchsim"
[[ -x "$sim" ]] || { echo "no $sim; build first (cmake --build $build --target matchsim)" >&2; exit 1; }
mkdir -p "$out"
exec > >(tee "$out/results.txt")
parties=65,20,5,3,7

run() {  # name, then matchsim flags
  local name="$1"; shift
  local args="$*"
  echo "## $name: matchsim ${args//$here\//}"
  "$sim" "$@"
  echo
}

# Frontiers: every algorithm over its knob.
# matchd-cost: windows from the arrival rate (waitCost swept, widening fixed).
all1v1=matchd,matchd-cost,both-windows,batch,fifo,offline
run "1v1, 10/s" --sweep --algorithms=$all1v1 --widen=1.5 --rate=10 --duration=3600 \
  --csv="$out/1v1-rate10.csv" --svg="$out/1v1-rate10.svg"
run "1v1, 1/s" --sweep --algorithms=$all1v1 --widen=0.8 --rate=1 --duration=20000 \
  --csv="$out/1v1-rate1.csv" --svg="$out/1v1-rate1.svg"
run "5v5 solo, 20/s" --sweep --algorithms=matchd,matchd-cost,both-windows,batch,fifo \
  --widen=10 --team_size=5 --rate=20 --duration=3600 \
  --csv="$out/5v5-solo.csv" --svg="$out/5v5-solo.svg"
run "5v5 parties, 20/s" --sweep --algorithms=matchd,both-windows,batch,fifo --team_size=5 \
  --rate=20 --duration=3600 --party_mix=$parties \
  --csv="$out/5v5-parties.csv" --svg="$out/5v5-parties.svg"

# The settings recorded against the targets, on three seeds.
for seed in 2 3; do
  run "target, seed $seed: 5v5 solo, 20/s" --seed=$seed --algorithms=matchd --team_size=5 \
    --rate=20 --duration=3600 --initial_window=35 --widen=18 --max_window=300
  run "target, seed $seed: 5v5 parties, 20/s" --seed=$seed --algorithms=matchd --team_size=5 \
    --rate=20 --duration=3600 --party_mix=$parties --widen=7
done
run "target: 1v1, 10/s" --rate=10 --duration=3600 --initial_window=5 --widen=4
run "target: 1v1, 1/s" --rate=1 --duration=20000 --initial_window=10 --widen=2
# The same with windows from the arrival rate, on three seeds.
for seed in 1 2 3; do
  run "target, seed $seed: 1v1, 10/s, waitCost" --seed=$seed --algorithms=matchd --rate=10 \
    --duration=3600 --wait_cost=3 --widen=1.5
  run "target, seed $seed: 1v1, 1/s, waitCost" --seed=$seed --algorithms=matchd --rate=1 \
    --duration=20000 --wait_cost=1.5 --widen=0.8
  run "target, seed $seed: 5v5 solo, 20/s, waitCost" --seed=$seed --algorithms=matchd \
    --team_size=5 --rate=20 --duration=3600 --wait_cost=100 --widen=10 --max_window=300
  run "target, seed $seed: 1v1, 10/s, waitCost + widenTime" --seed=$seed --algorithms=matchd \
    --rate=10 --duration=3600 --wait_cost=2 --widen=0.3 --widen_time=10
  # The lowest p99 found with p50 <= 1.5 s, mean gap <= 10 and >= 97 % of
  # matches fair on all three seeds (a grid over waitCost, widenPerSecond,
  # widenTime and initialWindow; docs/QUALITY.md).
  run "target, seed $seed: 1v1, 10/s, tail" --seed=$seed --algorithms=matchd --rate=10 \
    --duration=3600 --wait_cost=0.5 --widen=0.1 --widen_time=2.75
  run "target, seed $seed: 1v1, 1/s, waitCost + widenTime" --seed=$seed --algorithms=matchd \
    --rate=1 --duration=20000 --wait_cost=1 --widen=0.1 --widen_time=30
done
# The same with a cap on the window (maxWindow): the lowest p99 found with the
# same conditions on seeds 1-6 (docs/QUALITY.md, "A cap for the tail").
for seed in 1 2 3 4 5 6; do
  run "target, seed $seed: 1v1, 10/s, tail with maxWindow" --seed=$seed --algorithms=matchd \
    --rate=10 --duration=3600 --wait_cost=0.45 --widen=1.3 --widen_time=3.25 --max_window=90
done
run "target: 5v5 solo, 20/s" --algorithms=matchd,both-windows,batch --team_size=5 --rate=20 \
  --duration=3600 --initial_window=35 --widen=18 --max_window=300
run "target: 5v5 parties, 20/s" --algorithms=matchd,both-windows,batch --team_size=5 --rate=20 \
  --duration=3600 --party_mix=$parties --widen=7
run "regions: 5v5 solo, 20/s, three regions" --algorithms=matchd,batch,fifo --team_size=5 \
  --rate=20 --duration=3600 --initial_window=35 --widen=18 --max_window=300 --regions=eu,us,ap \
  --region_weights=5,4,2 --max_latency=60 --latency_widen=2 --latency_cap=150
run "abandonment and a daily curve: 1v1, 10/s" --algorithms=matchd,both-windows,batch \
  --rate=10 --duration=7200 --initial_window=5 --widen=4 --abandon_mean=60 \
  --daily_amplitude=0.5 --daily_period=3600
