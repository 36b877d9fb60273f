#!/usr/bin/env python3
"""Regenerate every sample output in README.md and docs/*.md from today's `sim`.

A sample output is a fenced block whose first line is a shell command (`$ sim …` or
`$ cargo run --release -- …`); each is preceded by a marker saying how it is made:

    <!-- regen: quick -->                         tiny model, calculators: seconds to a minute
    <!-- regen: slow -->                          the real model (run `sim fetch-model` first)
    <!-- regen: quick; setup: CMD && CMD -->      commands run first, their output not shown
    <!-- regen: quick; stdout -->                 what the commands print on stdout only
                                                  (progress lines on stderr left out)
    <!-- regen: manual; why: … -->                needs what this script cannot provide

A block may hold several commands (`$ …` lines, `\\` continuations joined); each command's
output replaces the lines after it. The block keeps its shape: where the old output showed
`…` (or `...`) in place of lines, the new one does too — lines are skipped up to the first line
that starts like the one after the ellipsis, an output cut after N lines is cut after N
lines again, and a command shown without output stays so.

Every command runs with `sim` meaning the release binary, in one scratch copy of the
repository (with `../shared` beside it), in document order, so later blocks see the run
directories earlier blocks and setups made.

Usage:  scripts/regen_docs.py [--slow] [--check] [--diff] [--sim PATH] [FILE ...]
  --slow   also the real-model blocks
  --check  rewrite nothing; list the blocks whose output changed (exit 1 if any)
  --diff   print each change as a unified diff
"""

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- regen: (quick|slow|manual)(; stdout)?(?:; (setup|why): (.*?))? -->$")
ELLIPSIS = ("…", "...")
KINDS = ("quick", "slow", "manual")


def doc_files(args):
    if args.files:
        return [Path(f).resolve() for f in args.files]
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def blocks(lines):
    """(marker index or None, fence start, fence end) of each fenced block."""
    out, i = [], 0
    while i < len(lines):
        if lines[i].startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            k = i - 1
            while k >= 0 and lines[k].strip() == "":
                k -= 1
            marker = k if k >= 0 and MARKER.match(lines[k]) else None
            out.append((marker, i, j))
            i = j + 1
        else:
            i += 1
    return out


def commands(body):
    """[(command lines, output lines)] of a block's body."""
    out, i = [], 0
    while i < len(body):
        if not body[i].startswith("$ "):
            raise ValueError(f"output before the first command: {body[i]!r}")
        cmd = [body[i]]
        while cmd[-1].endswith("\\") and i + 1 < len(body):
            i += 1
            cmd.append(body[i])
        i += 1
        start = i
        while i < len(body) and not body[i].startswith("$ "):
            i += 1
        out.append((cmd, body[start:i]))
    return out


def shell_text(cmd_lines):
    text = "\n".join(cmd_lines)[2:]
    text = text.replace("cargo run --release --", "sim")
    return text


def prefix(line):
    """How a line starts: up to its first digit, at most 24 characters."""
    m = re.match(r"[^0-9]*", line)
    return (m.group(0) if m else line)[:24]


def reshape(old, new):
    """`new` output in the shape of `old` (its ellipses; none shown stays none)."""
    if not old:
        return []
    if not any(l.strip() in ELLIPSIS for l in old):
        return new
    result, n, i = [], 0, 0
    while i < len(old):
        line = old[i]
        if line.strip() in ELLIPSIS:
            result.append(line)
            if i + 1 < len(old):
                want = prefix(old[i + 1])
                while n < len(new) and not new[n].startswith(want):
                    n += 1
            else:
                n = len(new)
        elif n < len(new):
            result.append(new[n])
            n += 1
        i += 1
    result.extend(new[n:])
    return result


def scratch(sim):
    """A scratch copy of the repository with `../shared` beside it and `sim` on PATH."""
    top = Path(tempfile.mkdtemp(prefix="fedsim-docs-"))
    work = top / "fedsim"
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for f in files:
        dst = work / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst)
    shared = ROOT.parent / "shared"
    if shared.exists():
        (top / "shared").symlink_to(shared)
    (top / "bin").mkdir()
    (top / "bin" / "sim").symlink_to(sim)
    return top, work


def run(text, work, env, stdout_only=False):
    p = subprocess.run(
        ["bash", "-c", text],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if stdout_only else subprocess.STDOUT,
        text=True,
    )
    return p.stdout.rstrip("\n").split("\n") if p.stdout.strip() else []


def find_sim(arg):
    if arg:
        return Path(arg).resolve()
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return (target / "release" / "sim").resolve()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slow", action="store_true")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--diff", action="store_true", help="print what changed")
    ap.add_argument("--sim")
    ap.add_argument("files", nargs="*")
    args = ap.parse_args()
    sim = find_sim(args.sim)
    if not sim.exists():
        sys.exit(f"no sim binary at {sim}: cargo build --release, or pass --sim PATH")
    top, work = scratch(sim)
    env = dict(os.environ, PATH=f"{top / 'bin'}:{os.environ['PATH']}", NO_COLOR="1")
    changed, skipped = [], []
    try:
        for path in doc_files(args):
            lines = path.read_text().split("\n")
            replaced = []
            for marker, start, end in blocks(lines):
                body = lines[start + 1 : end]
                if not body or not body[0].startswith("$ "):
                    continue
                where = f"{path.relative_to(ROOT)}:{start + 1}"
                if marker is None:
                    sys.exit(f"{where}: a sample output without a <!-- regen: … --> marker")
                kind, stdout_only, key, value = MARKER.match(lines[marker]).groups()
                if kind == "manual" or (kind == "slow" and not args.slow):
                    skipped.append(f"{where} ({kind}{': ' + value if key == 'why' else ''})")
                    continue
                if key == "setup":
                    run(value, work, env)
                regenerated = []
                for cmd, old in commands(body):
                    out = run(shell_text(cmd), work, env, bool(stdout_only))
                    if any("cannot serve metrics on" in l for l in out):
                        sys.exit(
                            f"{where}: another process serves metrics on sim's port; stop it and "
                            "run the script again (nothing was written for this file)"
                        )
                    regenerated += cmd + reshape(old, out)
                if regenerated != body:
                    changed.append(where)
                    if args.diff:
                        sys.stdout.writelines(
                            difflib.unified_diff(
                                [l + "\n" for l in body],
                                [l + "\n" for l in regenerated],
                                where,
                                where,
                            )
                        )
                    replaced.append((start, end, regenerated))
                print(f"{where}: {'changed' if regenerated != body else 'same'}", flush=True)
            new_lines = list(lines)
            for start, end, regenerated in reversed(replaced):
                new_lines[start + 1 : end] = regenerated
            if not args.check and replaced:
                path.write_text("\n".join(new_lines))
    finally:
        shutil.rmtree(top, ignore_errors=True)
    for s in skipped:
        print(f"skipped {s}")
    if args.check and changed:
        sys.exit(f"{len(changed)} block(s) differ from today's output: {', '.join(changed)}")


if __name__ == "__main__":
    main()
