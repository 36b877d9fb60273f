#!/usr/bin/env python3
"""Run a command and report, as one JSON line, its wall time, its own CPU time and the share of
the machine's CPU that other processes used meanwhile (from /proc/stat), with the last line of
its output: `benches/precision.sh` records this beside every figure."""
import json
import os
import resource
import subprocess
import sys
import time


def busy_jiffies():
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    return sum(parts[:8]) - idle


def main():
    hz = os.sysconf("SC_CLK_TCK")
    ncpu = os.cpu_count()
    before, ru0, t0 = busy_jiffies(), resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    out = subprocess.run(sys.argv[1:], capture_output=True, text=True)
    wall = time.time() - t0
    ru1, after = resource.getrusage(resource.RUSAGE_CHILDREN), busy_jiffies()
    own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    machine = (after - before) / hz
    stdout = [l for l in out.stdout.splitlines() if l.strip()]
    stderr = [l for l in out.stderr.splitlines() if l.strip()]
    print(
        json.dumps(
            {
                "command": " ".join(sys.argv[1:]),
                "rc": out.returncode,
                "wall_s": round(wall, 3),
                "own_cpu_s": round(own, 3),
                "other_cpu_frac": round(max(0.0, machine - own) / (wall * ncpu), 3),
                "stdout": stdout[-2:],
                "stderr": stderr[-1:],
            }
        )
    )


main()
