"""The whole `sftforge curate` on a labelled corpus, as a user runs it: wall time, records/s, each
stage's time and records/s, the start-up time (command to first stage), and peak RSS of the whole
process tree.

    .venv/bin/python ../shared/bench/make_corpus.py /tmp/corpus/c200k --records 200000 --seed 11
    .venv/bin/python bench/bench_pipeline.py /tmp/corpus/c200k [--out DIR] [--repo CHECKOUT]

`--repo` runs another checkout of sftforge (for a before/after comparison: `git worktree add
/tmp/before <commit>`) with this interpreter, so both sides use the same packages. The config is
the corpus's five sources with the demo's mixture (expert x2, synthetic <= 20% of tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_mix import SOURCES  # the corpus's five sources (name, file, format, tier)

REPO = Path(__file__).resolve().parents[1]


def write_config(corpus: Path, out: Path, path: Path) -> Path:
    lines = ['name = "bench-pipeline"', f'output_dir = "{out}"', ""]
    for name, rel, fmt, tier in SOURCES:
        lines += ["[[sources]]", f'name = "{name}"', f'path = "{corpus / rel}"', f'format = "{fmt}"', f'tier = "{tier}"', ""]
    lines += ["[mix.tiers.synthetic]", "max_share = 0.2", "", "[mix.tiers.expert]", "weight = 2", ""]
    path.write_text("\n".join(lines))
    return path


def _tree_rss_kb(root: int) -> int:
    """Resident memory of `root` and all its descendants, from /proc."""
    kids: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            status = (d / "status").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d.name))
        m = re.search(r"VmRSS:\s+(\d+)", status)
        rss[int(d.name)] = int(m.group(1)) if m else 0
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += kids.get(p, [])
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    ap.add_argument("--repo", type=Path, default=REPO, help="the sftforge checkout to run")
    args = ap.parse_args()
    truth = args.corpus / "truth.jsonl"
    records = sum(1 for _ in truth.open()) if truth.exists() else None
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    out = args.out or tmp / "run"
    if out.exists():
        shutil.rmtree(out)
    cfg = write_config(args.corpus.resolve(), out.resolve(), tmp / "bench.toml")
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(args.repo.resolve())}
    env.pop("PREFECT_API_URL", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "curate", str(cfg)], cwd=args.repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss_kb(proc.pid))
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    first_stage = None
    log = []
    assert proc.stdout is not None
    for line in proc.stdout:
        log.append(line)
        if first_stage is None and re.search(r"ingest-|ingesting", line):
            first_stage = time.perf_counter() - t0
    rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        sys.stdout.write("".join(log[-40:]))
        raise SystemExit(f"sftforge curate failed with status {rc}")
    load = os.getloadavg()
    print(f"sftforge curate on {args.corpus} ({records or '?'} records), checkout {args.repo}")
    print(f"  machine load (1/5/15 min): {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"  wall {wall:.1f} s = {records / wall:,.0f} records/s" if records else f"  wall {wall:.1f} s")
    if first_stage is not None:
        print(f"  start-up (command to first stage's log line): {first_stage:.1f} s")
    print(f"  peak RSS of the process tree: {peak[0] / 1024:,.0f} MB")
    rows = []
    for stats in sorted((out / "work").rglob("stats.json")):
        data = json.loads(stats.read_text())
        if isinstance(data, dict) and isinstance(data.get("seconds"), int | float):
            rows.append((str(stats.parent.relative_to(out / "work")), data["seconds"], data.get("records_in")))
    if rows:
        print(f"  {'stage':<20} {'seconds':>8} {'records/s':>10}")
        for name, sec, n in rows:
            rate = f"{n / sec:,.0f}" if n and sec else "-"
            print(f"  {name:<20} {sec:8.1f} {rate:>10}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
