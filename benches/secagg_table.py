#!/usr/bin/env python3
"""Secure aggregation side by side: fedsim in the clear vs fedsim's SecAgg+ (any value, and
under a value bound of 1: a ring of 56 bits or fewer) vs fedsim's
homomorphic aggregation (BFV, n = 8192, 3 key holders) vs Flower's SecAggPlusWorkflow, on the 135M adapter's 460,800 values, N clients all sampled, a share of them
dropping after the keys are shared (fedsim: `system.crash_probability`; Flower: the client's fit
raises). Runs each cell once, the two systems alternating, and prints a Markdown table with the
host's condition (CPU model, cores, the other processes' CPU share) and one JSON line per run.

  CARGO_TARGET_DIR=... python3 benches/secagg_table.py --sim target/release/sim \\
      --flower-python $HOME/.venvs/flower/bin/python -N 10 100 --dropout 0 0.1 0.3

fedsim's columns: bytes each client uploads (its masked vector and protocol messages), the
simulated round (laptop profiles: 20 Mbit/s up, 50 down, 30 ms), the host seconds of a round
(wall time: client masking, server unmasking and the rest of the run's round), and whether the
rounds released the sum. Flower's: its steady round's wall time, the bytes of its masked vector
(int64 ndarrays, as flwr 1.42 encodes them), and whether its rounds aggregated.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def measure(cmd):
    """Run `cmd` under benches/measure.py: wall, own CPU, other processes' CPU share."""
    out = subprocess.run([sys.executable, os.path.join(HERE, "measure.py")] + cmd,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


HE = "HomomorphicEncryption(scheme: Bfv(degree: 8192), key_holders: 3)"
LABEL = {"plain": "fedsim plain", "secagg": "fedsim SecAgg+",
         "secagg-bound": "fedsim SecAgg+, value_bound 1", "he": "fedsim HE (BFV, 3 key holders)"}


def fedsim(sim, n, dropout, mode, rounds, k, t):
    out = tempfile.mkdtemp(prefix="secagg_table_")
    cmd = [sim, "run", os.path.join(ROOT, "scenarios/bench_flower.ron"), "-q",
           "--metrics-addr", "none", "--out", out,
           "--set", f"clients.count={n}", "--set", "strategy.fraction_fit=1.0",
           "--set", f"strategy.min_fit_clients={min(n, t + 1)}",
           "--set", f"strategy.min_available_clients={n}",
           "--set", f"rounds={rounds}", "--set", f"system.crash_probability={dropout}"]
    if mode in ("secagg", "secagg-bound"):
        # The bound: the synthetic updates lie within ±1e-3, so every client keeps |x| ≤ 1.
        bound = "Some(1.0)" if mode == "secagg-bound" else "None"
        cmd += ["--set", f"strategy.secure_aggregation=SecAggPlus(neighbours: {k}, "
                         f"threshold: {t}, ring_bits: None, value_bound: {bound})"]
    elif mode == "he":
        cmd += ["--set", f"strategy.secure_aggregation={HE}"]
    m = measure(cmd)
    rounds_log = [json.loads(l) for l in open(os.path.join(out, "rounds.jsonl"))]
    completed = sum(r["completed"] for r in rounds_log)
    sampled = sum(r["sampled"] for r in rounds_log)
    # Clients that uploaded (a round that releases nothing still had their uploads).
    uploaded = sum(r["sampled"] - r["crashed"] - r["missed_deadline"] - r["failed"]
                   for r in rounds_log)
    up = sum(r["bytes_up"] for r in rounds_log)
    released = sum(1 for r in rounds_log if r["completed"] > 0 and "skipped" not in r)
    return {
        "system": LABEL[mode], "N": n, "dropout": dropout,
        "bytes_up_per_client": round(up / max(1, uploaded)),
        "sim_round_s": round(sum(r["sim_duration_s"] for r in rounds_log) / len(rounds_log), 2),
        "host_round_s": round(sum(r["wall_seconds"] for r in rounds_log[1:] or rounds_log)
                              / max(1, len(rounds_log[1:] or rounds_log)), 3),
        "released": f"{released}/{len(rounds_log)}", "updates": f"{completed}/{sampled}",
        "wall_s": m["wall_s"], "other_cpu_frac": m["other_cpu_frac"], "rc": m["rc"],
    }


def flower(python, n, dropout, rounds, k, t):
    # Flower's client keeps one share of its own secrets (num_shares = k + 1), fedsim's does
    # not: Flower's threshold t + 1 tolerates what fedsim's t does.
    cmd = [python, os.path.join(HERE, "flower_secagg.py"), "-N", str(n), "-R", str(rounds),
           "--shares", str(k + 1), "--threshold", str(t + 1), "--dropout", str(dropout)]
    m = measure(cmd)
    line = next((l for l in m["stdout"] if l.startswith("RESULT ")), None)
    if line is None:
        return {"system": "Flower SecAgg+", "N": n, "dropout": dropout, "rc": m["rc"],
                "error": m["stderr"]}
    r = json.loads(line[len("RESULT "):])
    return {
        "system": "Flower SecAgg+", "N": n, "dropout": dropout,
        "bytes_up_per_client": r["masked_vector_bytes"],
        "host_round_s": r["steady_round_s"],
        "released": f"{sum(r['round_aggregated'])}/{len(r['round_s'])}",
        "updates": "/".join(str(u) for u in r["updates_aggregated"]),
        "wall_s": m["wall_s"], "other_cpu_frac": m["other_cpu_frac"],
        "peak_tree_rss_mb": r["peak_tree_rss_mb"], "rc": m["rc"],
    }


def host():
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                  if l.startswith("model name")), "?")
    return f"{model}, {os.cpu_count()} cores"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sim", required=True)
    ap.add_argument("--flower-python")
    ap.add_argument("-N", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--flower-rounds", type=int, help="Flower's rounds (default: --rounds)")
    ap.add_argument("--flower-dropout", type=float, nargs="+",
                    help="the dropouts Flower runs (default: --dropout)")
    ap.add_argument("-k", type=int, default=8, help="neighbours (Flower: num_shares = k + 1)")
    ap.add_argument("-t", type=int, default=4, help="threshold")
    ap.add_argument("--modes", nargs="+", default=["plain", "secagg", "secagg-bound", "he"],
                    help="fedsim's modes: plain, secagg, secagg-bound (value_bound: Some(1.0)), he")
    args = ap.parse_args()
    rows = []
    for n in args.N:
        for d in args.dropout:
            runs = [(lambda m=m: fedsim(args.sim, n, d, m, args.rounds, args.k, args.t))
                    for m in args.modes]
            if args.flower_python and d in (args.flower_dropout or args.dropout):
                runs.append(lambda: flower(args.flower_python, n, d,
                                           args.flower_rounds or args.rounds, args.k, args.t))
            for run in runs:
                row = run()
                print(json.dumps(row), flush=True)
                rows.append(row)
    print(f"\nhost: {host()}; k = {args.k} neighbours, t = {args.t}, {args.rounds} rounds a run\n")
    print("| system | N | dropout | bytes up / client | simulated round (s) | host round (s) "
          "| rounds released | other CPU |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {r['N']} | {r['dropout']:.0%} | {r.get('bytes_up_per_client', '-'):,} "
              f"| {r.get('sim_round_s', '-')} | {r.get('host_round_s', '-')} "
              f"| {r.get('released', '-')} | {r.get('other_cpu_frac', '-')} |")


if __name__ == "__main__":
    main()
