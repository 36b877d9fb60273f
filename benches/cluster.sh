#!/usr/bin/env bash
# Coordinator overhead per remote job, on loopback: the same synthetic rounds on one local slot
# and on 1, 2, 3 one-slot `sim worker` processes (no local slot), for a small job (1,000
# values, 4 kB each way) and scale_100k's (460,800 values, 1.8 MB each way). A job's overhead is
# its mean round trip to a worker minus its mean time on a local slot; cluster_table.py prints
# the table, with the coordinator's and the workers' peak RSS.
#
#   CARGO_TARGET_DIR=... benches/cluster.sh [OUT_DIR]       (ROUNDS=2 PARAMS="1000 460800")
set -euo pipefail
cd "$(dirname "$0")/.."
SIM=${SIM:-${CARGO_TARGET_DIR:-target}/release/sim}
OUT=${1:-/tmp/fedsim-cluster-bench}
ROUNDS=${ROUNDS:-2}
PARAMS=${PARAMS:-"1000 460800"}
rm -rf "$OUT" && mkdir -p "$OUT"
head -c 24 /dev/urandom | base64 > "$OUT/cookie"
base=(scenarios/scale_100k.ron --metrics-addr none -q --set "rounds=$ROUNDS")

start_worker() { # port -> pid
  "$SIM" worker --listen "127.0.0.1:$1" --cookie-file "$OUT/cookie" --slots 1 \
    --threads-per-slot 1 >"$OUT/worker-$1.log" 2>&1 &
  echo $!
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do sleep 0.05; done
}

for params in $PARAMS; do
  run="$OUT/local-$params"
  /usr/bin/time -f '%M' -o "$run.rss" "$SIM" run "${base[@]}" --out "$run" \
    --set "trainer=Synthetic(params: $params)" --set slots.count=1
  for n in 1 2 3; do
    pids=() addrs=()
    for i in $(seq 1 "$n"); do
      port=$((7300 + i))
      pids+=("$(start_worker "$port")")
      addrs+=("127.0.0.1:$port")
    done
    run="$OUT/workers$n-$params"
    /usr/bin/time -f '%M' -o "$run.rss" "$SIM" run "${base[@]}" --out "$run" \
      --set "trainer=Synthetic(params: $params)" --set slots.count=0 \
      --workers "$(IFS=,; echo "${addrs[*]}")" --cookie-file "$OUT/cookie"
    for pid in "${pids[@]}"; do
      awk '/VmHWM/ {print $2}' "/proc/$pid/status" >>"$run.worker-rss"
      kill "$pid" && wait "$pid" 2>/dev/null || true
    done
  done
done
python3 benches/cluster_table.py "$OUT"
