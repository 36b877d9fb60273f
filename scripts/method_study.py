#!/usr/bin/env python3
"""Parameter-efficient methods and update compression, from run directories: per run, the
method and codec, trainable values, bytes of one client's upload, the final held-out loss, the
round, simulated time and upload bytes until the held-out loss first reached a target, and —
where `sim attack` has written attack.json into the run — the loss attack's membership AUC
(± 1.96 standard errors) and the mean exposure of the canaries whose client trained.

With --accuracy (runs with a scenario `eval` task), the target is the task's
`eval.target_accuracy` on its subset instead, and the final loss column gives way to the task
accuracy on the whole split with its Wilson 95 % interval (the pretrained control's below the
table).

Usage:  scripts/method_study.py (--target-loss LOSS | --accuracy) RUN_DIR...
"""

import argparse
import json
from pathlib import Path


def method(run_dir):
    """The adapter's method, from the effective scenario the run recorded."""
    text = (run_dir / "scenario.ron").read_text()
    names = {"Dora": "DoRA", "Ia3": "IA³", "PromptTuning": "prompt", "PrefixTuning": "prefix"}
    for name, shown in names.items():
        if f"{name}(" in text.split("adapter:", 1)[-1].split("data:", 1)[0]:
            return shown
    return "LoRA"


def attack(run_dir):
    path = run_dir / "attack.json"
    if not path.exists():
        return "-", "-"
    a = json.loads(path.read_text())
    loss = next(s for s in a["membership"]["scores"] if s["score"] == "loss")["roc"]
    # As `sim attack` reports it: over the canaries whose client trained in the run.
    exposures = [c["run"]["exposure"] for c in a["canaries"] if c["seen"]]
    auc = f"{loss['auc']:.3f} ± {1.96 * loss['auc_se']:.3f}"
    mean = f"{sum(exposures) / len(exposures):.2f}" if exposures else "-"
    return auc, mean


def study(run_dir, target):
    summary = json.loads((run_dir / "summary.json").read_text())
    rounds = [json.loads(l) for l in (run_dir / "rounds.jsonl").read_text().splitlines() if l]
    codec = summary.get("compression") or {}
    task = summary.get("task_eval")
    up, reached = 0, None
    for r in rounds:
        up += r["bytes_up"]
        end = r["sim_start_s"] + r["sim_duration_s"]
        if reached is None and target is not None and r["eval_loss"] <= target:
            reached = (r["round"], end, up)
    if target is None:
        t = task["time_to_accuracy"]
        reached = (t["round"], t["sim_seconds"], t["bytes_up"]) if t["round"] is not None else None
    last = rounds[-1]
    per_upload = codec.get("bytes_per_upload") or last["bytes_up"] // max(last["completed"], 1)
    auc, exposure = attack(run_dir)
    return {
        "method": method(run_dir),
        "codec": codec.get("codec", "none"),
        "trainable": str(summary["trainable_parameters"]),
        "B/upload": str(per_upload),
        **({"accuracy": f"{task['accuracy']:.3f} [{task['ci95'][0]:.3f}, {task['ci95'][1]:.3f}]"}
           if target is None else {"final loss": f"{last['eval_loss']:.4f}"}),
        "to target: round": str(reached[0]) if reached else "never",
        "sim (s)": f"{reached[1]:.1f}" if reached else "-",
        "MB up": f"{reached[2] / 1e6:.3f}" if reached else "-",
        "member AUC": auc,
        "exposure": exposure,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--target-loss", type=float)
    how.add_argument("--accuracy", action="store_true")
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args()
    # Run directories only (a sweep directory also holds sweep.csv and sweep.txt).
    runs = [r for r in args.runs if (r / "summary.json").exists()]
    rows = [study(r, None if args.accuracy else args.target_loss) for r in runs]
    cols = list(rows[0])
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("  ".join(c.rjust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(r[c].rjust(width[c]) for c in cols))
    if args.accuracy:
        task = json.loads((runs[0] / "summary.json").read_text())["task_eval"]
        target = (f"target: {task['task']} subset accuracy ≥ {task['time_to_accuracy']['target']} "
                  f"({task['subset_items']} items); accuracy: after the last round on "
                  f"{'the whole split' if task['items'] > task['subset_items'] else 'the subset'} "
                  f"({task['items']} items), Wilson 95 % interval; pretrained control "
                  f"{task['pretrained_accuracy']:.3f}, majority class {task['majority']:.3f}")
    else:
        target = f"target: held-out loss ≤ {args.target_loss} nats/token"
    print(
        f"{target}; sim = simulated seconds and "
        "MB up = upload bytes (10^6) until it was first reached; member AUC: the loss attack's "
        "ROC AUC ± 1.96 s.e. (0.5 = chance); exposure: mean exposure of the canaries whose client "
        "trained, bits"
    )


if __name__ == "__main__":
    main()
