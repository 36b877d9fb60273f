#!/usr/bin/env python3
"""Split fine-tuning study, from run directories: per run, the topology (flat, or SplitFed /
U-shaped at a cut with a codec), the task accuracy after the last round with its Wilson 95 %
interval, megabytes per round (adapter up + down, and the cut's activations + gradients),
simulated seconds per round, and — where `sim invert` has written inversion.json — the share of
the clients' private tokens the server recovers from the cut's activations (nearest token,
learned decoder; response tokens apart).

Usage:  scripts/split_study.py RUN_DIR...
"""

import argparse
import json
import re
from pathlib import Path


def topology(run_dir):
    """(mode, cut, codec) from the effective scenario the run recorded."""
    text = (run_dir / "scenario.ron").read_text()
    start = text.find("topology: Split(")
    if start < 0:
        return "flat", "-", "-"
    body = text[start:text.index("\n    ),", start)]
    cut = re.search(r"cut_layer:\s*(\d+)", body).group(1)
    mode = "U-shaped" if "UShaped" in body else "SplitFed"

    def codec(field):
        m = re.search(field + r":\s*(r#None|None|Fp16|Int8|TopK\(\s*fraction:\s*([0-9.e-]+),?\s*\))", body)
        if not m:
            return "none"
        if m.group(2):
            return f"top{float(m.group(2)) * 100:g}%"
        return m.group(1).replace("r#", "").lower()

    act, grad = codec("activation_compression"), codec("gradient_compression")
    return mode, cut, act if act == grad else f"{act}/{grad}"


def rate(r):
    return f"{100 * r['rate']:.1f} [{100 * r['interval'][0]:.0f}, {100 * r['interval'][1]:.0f}]"


def row(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds = [json.loads(l) for l in (run_dir / "rounds.jsonl").read_text().splitlines() if l]
    task = summary["task_eval"]
    n = len(rounds)
    adapter = sum(r["bytes_up"] + r["bytes_down"] for r in rounds) / n
    cut = sum(r.get("split", {}).get("up_bytes", 0) + r.get("split", {}).get("down_bytes", 0)
              for r in rounds) / n
    msgs = sum(r.get("split", {}).get("messages", 0) for r in rounds) / n
    sim = sum(r["sim_duration_s"] for r in rounds) / n
    mode, layer, codec = topology(run_dir)
    inv_path = run_dir / "inversion.json"
    inv = json.loads(inv_path.read_text()) if inv_path.exists() else None
    return {
        "topology": mode,
        "cut": layer,
        "codec": codec,
        "accuracy": f"{task['accuracy']:.3f} [{task['ci95'][0]:.3f}, {task['ci95'][1]:.3f}]",
        "MB adapter/round": f"{adapter / 1e6:.2f}",
        "MB cut/round": f"{cut / 1e6:.1f}",
        "msgs/round": f"{msgs:.0f}",
        "sim s/round": f"{sim:.1f}",
        "nearest %": rate(inv["nearest"]) if inv else "-",
        "decoder %": rate(inv["learned"]) if inv else "-",
        "decoder resp. %": rate(inv["learned_response"]) if inv else "-",
        "floor %": f"{100 * inv['floor']['rate']:.1f}" if inv else "-",
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args()
    # Finished runs only (a run in progress has a summary without its task accuracy).
    runs = [r for r in args.runs if (r / "summary.json").exists()
            and json.loads((r / "summary.json").read_text())["status"] == "completed"]
    rows = [row(r) for r in runs]
    cols = list(rows[0])
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("  ".join(c.rjust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(r[c].rjust(width[c]) for c in cols))
    task = json.loads((runs[0] / "summary.json").read_text())["task_eval"]
    print(
        f"accuracy: {task['task']} after the last round on {task['items']} items, Wilson 95 % "
        f"interval (pretrained {task['pretrained_accuracy']:.3f}, majority class "
        f"{task['majority']:.3f}); MB adapter: LoRA bytes down + up (the client-side half under "
        "Split), MB cut: activations + labels up, gradients down (and U-shaped's top "
        "activations and gradients), 10^6 bytes, all sampled clients; sim s: simulated round "
        "time; nearest / decoder: private tokens the server recovers from the cut's "
        "activations (%, Wilson 95 %), decoder resp.: response tokens only; floor: guessing "
        "the most frequent token"
    )


if __name__ == "__main__":
    main()
