#!/usr/bin/env python3
"""Flat vs hierarchical, from run directories: per run, the final held-out loss, the
simulated time and the WAN bytes of the whole run, and the simulated time and WAN bytes until
the held-out loss first reached a target.

WAN bytes are what crossed the wide-area link, both ways: edges <-> cloud in a hierarchical run
(`hierarchy.wan_bytes_*` in rounds.jsonl), every client <-> the server in a flat run
(`bytes_down` + `bytes_up`).

Usage:  scripts/hierarchy_study.py --target-loss LOSS RUN_DIR...
"""

import argparse
import json
from pathlib import Path


def wan(r):
    h = r.get("hierarchy")
    if h:
        return h["wan_bytes_down"] + h["wan_bytes_up"]
    return r["bytes_down"] + r["bytes_up"]


def study(run_dir, target):
    rounds = [json.loads(l) for l in (run_dir / "rounds.jsonl").read_text().splitlines() if l]
    total, reached = 0, None
    for r in rounds:
        total += wan(r)
        end = r["sim_start_s"] + r["sim_duration_s"]
        if reached is None and r["eval_loss"] <= target:
            reached = (r["round"], end, total)
    last = rounds[-1]
    return {
        "final loss": f"{last['eval_loss']:.4f}",
        "sim (s)": f"{last['sim_start_s'] + last['sim_duration_s']:.1f}",
        "WAN MB": f"{total / 1e6:.2f}",
        "to target: round": str(reached[0]) if reached else "never",
        "sim (s) ": f"{reached[1]:.1f}" if reached else "-",
        "WAN MB ": f"{reached[2] / 1e6:.2f}" if reached else "-",
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--target-loss", type=float, required=True)
    a = p.parse_args()
    table = [{"run": Path(d).name, **study(Path(d), a.target_loss)} for d in a.runs]
    heads = list(table[0])
    widths = [max(len(h), *(len(t[h]) for t in table)) for h in heads]
    print("  ".join(h.rjust(w) for h, w in zip(heads, widths)))
    for t in table:
        print("  ".join(t[h].rjust(w) for h, w in zip(heads, widths)))
    print(f"target: held-out loss <= {a.target_loss} nats per response token; "
          "WAN = edges <-> cloud (hierarchical) or clients <-> server (flat), both ways; "
          "MB = 10^6 bytes")


if __name__ == "__main__":
    main()
