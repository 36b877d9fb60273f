#!/usr/bin/env python3
"""The table of docs/precision.md from `benches/precision.sh`'s precision.jsonl: per condition,
each tool's step time, peak RSS and generation speed, the ratios to PyTorch and llama.cpp, and
the other-process CPU share of each window.

Usage: python3 benches/precision_table.py runs/bench-precision/precision.jsonl
"""
import json
import re
import statistics
import sys
from collections import defaultdict


def parse(rec):
    what, out, err = rec["what"], " ".join(rec.get("stdout", [])), " ".join(rec.get("stderr", []))
    if rec.get("rc", 0) != 0:
        return {}  # killed or failed: no figure
    if what.startswith("fedsim step"):
        m = re.search(r"median ([\d.]+) s.*peak RSS (\d+) MiB", out)
        return {"step_s": float(m[1]), "rss_mib": float(m[2])} if m else {}
    if what.startswith("pytorch"):
        d = json.loads(out[out.index("{"):])
        return {
            "step_s": d["train"]["median_ms"] / 1000,
            "rss_mib": d["train"]["peak_rss_during_train_mib"],
            "tok_s": d["generate64_base"]["decode_only_tokens_per_s"],
        }
    if what.startswith("fedsim generate"):
        return {"tok_s": float(re.search(r"\(([\d.]+) tokens/s", err + out)[1])}
    if what.startswith("llama.cpp"):
        return {"tok_s": json.loads(out[out.index("{"):])["tokens_per_s"]}
    return {}


def main():
    rows = defaultdict(lambda: defaultdict(list))
    other = defaultdict(lambda: defaultdict(list))
    for line in open(sys.argv[1]):
        rec = json.loads(line)
        for k, v in parse(rec).items():
            rows[rec["condition"]][(rec["what"], k)].append(v)
        other[rec["condition"]][rec["what"]].append(rec["other_cpu_frac"])
    for cond, r in rows.items():
        med = {k: statistics.median(v) for k, v in r.items()}
        torch_step = med.get(("pytorch step+generation", "step_s"))
        torch_rss = med.get(("pytorch step+generation", "rss_mib"))
        torch_tok = med.get(("pytorch step+generation", "tok_s"))
        llama_tok = med.get(("llama.cpp generate", "tok_s"))
        print(f"\n{cond} (medians of {len(next(iter(r.values())))} run(s))\n")
        print("| | train step (s) | ÷ PyTorch | peak RSS (MiB) | ÷ PyTorch | other CPU |")
        print("|---|---|---|---|---|---|")
        ratio = lambda a, b: f"{a / b:.2f}×" if a is not None and b else "n/a"
        for what in sorted({w for w, _ in r if "step" in w}):
            s, m = med.get((what, "step_s")), med.get((what, "rss_mib"))
            o = max(other[cond][what])
            print(
                f"| {what.replace(' step+generation', '')} | {s:.2f} | {ratio(s, torch_step)} "
                f"| {m:.0f} | {ratio(m, torch_rss)} | {o:.0%} |"
            )
        print("\n| | generation (tok/s) | ÷ PyTorch | ÷ llama.cpp | other CPU |")
        print("|---|---|---|---|---|")
        for what in sorted({w for w, k in r if k == "tok_s"}):
            t = med[(what, "tok_s")]
            print(
                f"| {what.replace(' step+generation', '')} | {t:.1f} | {ratio(t, torch_tok)} "
                f"| {ratio(t, llama_tok)} | {max(other[cond][what]):.0%} |"
            )


main()
