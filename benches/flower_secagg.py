#!/usr/bin/env python3
"""Flower's SecAgg+ (SecAggPlusWorkflow + secaggplus_mod) on a LoRA-sized update: the peer of
fedsim's `benches/secagg_table.py`.

Every one of N SuperNodes is sampled each round (fraction 1.0); each "trains" by adding seeded
noise to P float32 values (default 460,800: SmolLM2-135M's rank-8 LoRA on q_proj + v_proj) and
raises an exception with probability --dropout (Flower then treats it as dropped in the
collect-masked-vectors stage). SecAgg+ with --shares neighbours and --threshold.

Prints one line `RESULT {json}` on stdout (logs on stderr): wall time, per-round time, the
round's aggregation status, peak memory of the process tree, CPU seconds, and the bytes one
client's masked vector takes as Flower encodes it (int64 ndarrays, read from flwr's code: the
mask is drawn by numpy RandomState and added as int64 before the mod).

Set up once (outside the repository):
  python3 -m venv $HOME/.venvs/flower
  $HOME/.venvs/flower/bin/pip install "flwr[simulation]==1.42.0" psutil
Run:
  $HOME/.venvs/flower/bin/python benches/flower_secagg.py -N 10 -R 2 --shares 8 --threshold 4
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

T0 = time.perf_counter()
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

import numpy as np  # noqa: E402
import psutil  # noqa: E402


def peak_tree_rss(root: psutil.Process, peak: list) -> None:
    rss = 0
    for p in [root] + root.children(recursive=True):
        try:
            rss += p.memory_info().rss
        except psutil.Error:
            pass
    peak[0] = max(peak[0], rss)


def tree_cpu(root: psutil.Process, seen: dict) -> None:
    for p in [root] + root.children(recursive=True):
        try:
            t = p.cpu_times()
            seen[p.pid] = max(seen.get(p.pid, 0.0), t.user + t.system)
        except psutil.Error:
            pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-N", "--clients", type=int, default=10)
    ap.add_argument("-R", "--rounds", type=int, default=2)
    ap.add_argument("-P", "--params", type=int, default=460_800)
    ap.add_argument("--shares", type=int, default=8, help="SecAgg+ num_shares (neighbours + 1)")
    ap.add_argument("--threshold", type=int, default=4, help="reconstruction_threshold")
    ap.add_argument("--dropout", type=float, default=0.0, help="probability a client fails its fit")
    ap.add_argument("--plain", action="store_true", help="no SecAgg+ (Flower's DefaultWorkflow)")
    ap.add_argument("--num-cpus", type=float, default=1.0)
    args = ap.parse_args()

    import threading

    import flwr
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import Context
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.simulation import run_simulation

    root = psutil.Process(os.getpid())
    peak, cpu, stop = [0], {}, threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak_tree_rss(root, peak)
            tree_cpu(root, cpu)
            stop.wait(0.25)

    threading.Thread(target=sample, daemon=True).start()
    P, p_drop = args.params, args.dropout

    class Client(NumPyClient):
        def __init__(self, pid: int) -> None:
            self.pid = pid

        def fit(self, parameters, config):
            rnd = int(config.get("server_round", config.get("round", 0)) or 0)
            rng = np.random.default_rng(1_000_003 * rnd + self.pid)
            if p_drop > 0 and rng.random() < p_drop:
                raise RuntimeError(f"injected dropout {self.pid}")
            w = parameters[0] - 0.01 * rng.standard_normal(P, dtype=np.float32)
            return [w], 100, {}

    def client_fn(context: Context):
        return Client(int(context.node_config["partition-id"])).to_client()

    client_app = ClientApp(client_fn=client_fn, mods=[] if args.plain else [secaggplus_mod])
    # The ServerApp may run in another process: it appends its round times to a file.
    import tempfile
    log_path = tempfile.mktemp(prefix="flower_secagg_", suffix=".log")

    def note(kind: str, server_round: int, value: float) -> None:
        with open(log_path, "a") as f:
            f.write(f"{kind} {server_round} {value!r}\n")

    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=2,
                      min_available_clients=args.clients, accept_failures=True,
                      initial_parameters=None)
    orig_cfg, orig_agg = strategy.configure_fit, strategy.aggregate_fit

    def cfg(server_round, parameters, client_manager):
        note("start", server_round, time.time())
        return orig_cfg(server_round, parameters, client_manager)

    def agg(server_round, results, failures):
        res = orig_agg(server_round, results, failures)
        note("end", server_round, time.time())
        note("ok", server_round, float(res[0] is not None))
        note("results", server_round, float(len(results)))
        return res

    strategy.configure_fit, strategy.aggregate_fit = cfg, agg
    from flwr.common import ndarrays_to_parameters
    strategy.initial_parameters = ndarrays_to_parameters([np.zeros(P, dtype=np.float32)])
    server_app = ServerApp()

    @server_app.main()
    def main_fn(grid, context: Context) -> None:
        ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=args.rounds),
                            strategy=strategy)
        fit = None if args.plain else SecAggPlusWorkflow(
            num_shares=args.shares, reconstruction_threshold=args.threshold)
        workflow = DefaultWorkflow(fit_workflow=fit) if fit else DefaultWorkflow()
        workflow(grid, ctx)

    t_sim = time.perf_counter()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=args.clients,
                   backend_config={"client_resources": {"num_cpus": args.num_cpus},
                                   "init_args": {"include_dashboard": False, "log_to_driver": False}})
    wall = time.perf_counter() - t_sim
    stop.set()
    timings: dict = {"start": {}, "end": {}, "ok": {}, "results": {}}
    if os.path.exists(log_path):
        for line in open(log_path):
            kind, r, v = line.split()  # noqa
            timings[kind][int(r)] = float(v)
        os.remove(log_path)
    else:
        sys.stderr.write(f"no round log at {log_path}\n")
    rounds = sorted(timings["end"])
    per_round = [timings["end"][r] - timings["start"][r] for r in rounds]
    buf = io.BytesIO()
    np.save(buf, np.zeros(P, dtype=np.int64), allow_pickle=False)  # flwr's ndarray_to_bytes
    weight = io.BytesIO()
    np.save(weight, np.zeros(1, dtype=np.int64), allow_pickle=False)
    out = {
        "flwr": flwr.__version__, "N": args.clients, "R": args.rounds, "P": P,
        "secagg": not args.plain, "shares": args.shares, "threshold": args.threshold,
        "dropout": args.dropout,
        "round_s": [round(x, 3) for x in per_round],
        "round_aggregated": [bool(timings["ok"][r]) for r in rounds],
        "updates_aggregated": [int(timings["results"][r]) for r in rounds],
        "steady_round_s": round(sum(per_round[1:]) / max(1, len(per_round) - 1), 3)
        if len(per_round) > 1 else (round(per_round[0], 3) if per_round else None),
        "run_simulation_s": round(wall, 3),
        "wall_total_s": round(time.perf_counter() - T0, 3),
        "masked_vector_bytes": len(buf.getvalue()) + len(weight.getvalue()),
        "peak_tree_rss_mb": round(peak[0] / 2**20, 1),
        "tree_cpu_s": round(sum(cpu.values()), 2),
    }
    sys.stdout.write("RESULT " + json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
