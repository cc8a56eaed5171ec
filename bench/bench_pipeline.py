"""The whole `sftforge curate` on a labelled corpus, as a user runs it: wall time, records/s, each
stage's time and records/s, the start-up time (command to first stage), and peak RSS of the whole
process tree.

    .venv/bin/python ../shared/bench/make_corpus.py /tmp/corpus/c200k --records 200000 --seed 11
    .venv/bin/python bench/bench_pipeline.py /tmp/corpus/c200k [--out DIR] [--repo CHECKOUT]

`--repo` runs another checkout of sftforge (for a before/after comparison: `git worktree add
/tmp/before <commit>`) with this interpreter, so both sides use the same packages. The config is
the corpus's five sources with the demo's mixture (expert x2, synthetic <= 20% of tokens). The
Prefect database of the run's PREFECT_HOME exists before timing (as after a user's first run);
`--cold-prefect` times a first run, whose server creates it (~15 s more on this machine).
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
sys.path.insert(0, str(REPO))
from flows.stages import STAGES  # noqa: E402 - the registry: the stages in the order the flow runs them

STAGE_ORDER = list(STAGES)


def write_config(corpus: Path, out: Path, path: Path) -> Path:
    lines = ['name = "bench-pipeline"', f'output_dir = "{out}"', ""]
    for name, rel, fmt, tier in SOURCES:
        lines += ["[[sources]]", f'name = "{name}"', f'path = "{corpus / rel}"', f'format = "{fmt}"', f'tier = "{tier}"', ""]
    lines += ["[mix.tiers.synthetic]", "max_share = 0.2", "", "[mix.tiers.expert]", "weight = 2", ""]
    path.write_text("\n".join(lines))
    return path


_TICK = os.sysconf("SC_CLK_TCK")


def _tree_rss_kb(root: int, cpu: dict[int, tuple[str, float]] | None = None) -> int:
    """Resident memory of `root` and all its descendants, from /proc; with `cpu`, also record each
    one's kind (main, server, worker) and CPU seconds so far."""
    kids: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    secs: dict[int, float] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            status = (d / "status").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        ppid = int(fields[1])
        secs[int(d.name)] = (int(fields[11]) + int(fields[12])) / _TICK
        kids.setdefault(ppid, []).append(int(d.name))
        m = re.search(r"VmRSS:\s+(\d+)", status)
        rss[int(d.name)] = int(m.group(1)) if m else 0
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += kids.get(p, [])
        if cpu is not None and p in secs:
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            kind = "main" if p == root else "prefect server" if "uvicorn" in cmd else "workers"
            cpu[p] = (kind, secs[p])
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    ap.add_argument("--repo", type=Path, default=REPO, help="the sftforge checkout to run")
    ap.add_argument("--log", type=Path, default=None, help="write the run's output here, each line with its time")
    ap.add_argument("--cold-prefect", action="store_true",
                    help="time the first run in a new PREFECT_HOME (its database is created inside the timed run, "
                    "~15 s more) instead of a run in an existing one, as every run after a user's first is")
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
    if not args.cold_prefect:  # create the Prefect database once, untimed, as a user's first run did
        subprocess.run([sys.executable, "-c", "from flows.procs import local_prefect_server as s\nwith s(): pass"],
                       cwd=args.repo, env=env, check=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "curate", str(cfg)], cwd=args.repo, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    cpu: dict[int, tuple[str, float]] = {}

    stage_peak: dict[str, int] = {}
    current = ["start-up"]
    ingested = [0]

    def sample() -> None:
        while proc.poll() is None:
            rss = _tree_rss_kb(proc.pid, cpu)
            peak[0] = max(peak[0], rss)
            stage_peak[current[0]] = max(stage_peak.get(current[0], 0), rss)
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    first_stage = None
    log = []
    assert proc.stdout is not None
    for line in proc.stdout:
        log.append(f"{time.perf_counter() - t0:7.1f}s {line}")
        if first_stage is None and re.search(r"ingest-|ingesting", line):
            first_stage = time.perf_counter() - t0
            current[0] = "ingest"
        if re.search(r"ingest-\S+ - Finished in state", line):
            ingested[0] += 1
            if ingested[0] == len(SOURCES):
                current[0] = "dedup"
        if m := re.search(r"[|-] (\w+): \d+ part\(s\) out", line):  # a stage ended: the next one runs
            names = [*STAGE_ORDER, "finalize/report"]
            current[0] = names[names.index(m.group(1)) + 1] if m.group(1) in names else m.group(1)
    rc = proc.wait()
    wall = time.perf_counter() - t0
    if args.log:
        args.log.write_text("".join(log))
    if rc != 0:
        sys.stdout.write("".join(log[-40:]))
        raise SystemExit(f"sftforge curate failed with status {rc}")
    load = os.getloadavg()
    print(f"sftforge curate on {args.corpus} ({records or '?'} records), checkout {args.repo}")
    print(f"  machine load (1/5/15 min): {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print("  Prefect database: " + ("new (created inside the timed run)" if args.cold_prefect else
                                    "existing (created before timing, as by a user's first run)"))
    print(f"  wall {wall:.1f} s = {records / wall:,.0f} records/s" if records else f"  wall {wall:.1f} s")
    if first_stage is not None:
        print(f"  start-up (command to first stage's log line): {first_stage:.1f} s")
    print(f"  peak RSS of the process tree: {peak[0] / 1024:,.0f} MB ("
          + ", ".join(f"{k} {v / 1024:,.0f}" for k, v in stage_peak.items()) + ")")
    by_kind: dict[str, float] = {}
    for kind, sec in cpu.values():
        by_kind[kind] = by_kind.get(kind, 0.0) + sec
    print("  CPU seconds (sampled every 0.5 s): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(by_kind.items())))
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
