"""The table of benches/cluster.sh: per job, a local slot's time and a worker's round trip;
the coordinator's overhead per remote job (their difference), bytes per job, wall time and
peak RSS of the coordinator and of each worker."""
import json
import pathlib
import sys

out = pathlib.Path(sys.argv[1])


def jobs(run):
    return sum(json.loads(l)["completed"] for l in (run / "rounds.jsonl").open())


def crashed(run):
    """Clients whose job did not come back (a worker lost): the bench is void if any."""
    return sum(json.loads(l)["crashed"] for l in (run / "rounds.jsonl").open())


def rss_mib(path):
    values = [int(v) for v in path.read_text().split()] if path.exists() else []
    return max(values) / 1024 if values else float("nan")


print("| job values | slots | jobs | per job: local slot / remote round trip | overhead per job "
      "| bytes per job (to + from) | wall | coordinator RSS | worker RSS (max) |")
print("|---|---|---|---|---|---|---|---|---|")
for params in sorted({p.name.split("-")[-1] for p in out.glob("local-*") if p.is_dir()}, key=int):
    local = out / f"local-{params}"
    s = json.loads((local / "summary.json").read_text())
    n = jobs(local)
    local_ms = 1e3 * sum(s["slot_busy_seconds"]) / n
    print(f"| {int(params):,} | 1 local | {n} | {local_ms:.3f} ms | — | — | "
          f"{s['wall_seconds']:.2f} s | {rss_mib(local.with_suffix('.rss')):.0f} MiB | — |")
    for k in (1, 2, 3):
        run = out / f"workers{k}-{params}"
        if not (run / "summary.json").exists():
            continue
        s = json.loads((run / "summary.json").read_text())
        if crashed(run):
            sys.exit(f"{run}: {crashed(run)} clients crashed; the measurement is void")
        w = s["workers"]
        done = sum(x["jobs"] for x in w)
        trip_ms = 1e3 * sum(x["busy_seconds"] for x in w) / done
        per_job = sum(x["bytes_sent"] + x["bytes_received"] for x in w) / done
        print(f"| {int(params):,} | {k} worker(s) | {done} | {trip_ms:.3f} ms | "
              f"{trip_ms - local_ms:+.3f} ms | {per_job:,.0f} B | {s['wall_seconds']:.2f} s | "
              f"{rss_mib(run.with_suffix('.rss')):.0f} MiB | "
              f"{rss_mib(pathlib.Path(str(run) + '.worker-rss')):.0f} MiB |")
