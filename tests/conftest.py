"""Shared test set-up: Prefect offline with a temporary PREFECT_HOME, tiny sources, a real server.

Prefect reads its settings when imported, so the environment is set here, before any test module
imports it. Nothing here is downloaded; the data is written by the tests.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="sftforge-prefect-home-"))
os.environ.setdefault("PREFECT_HOME", str(_PREFECT_HOME))
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

# Words for generated text: varied enough that near-duplicate detection and language id see
# distinct English conversations, and the in-test BPE tokenizer has something to learn.
_WORD_TEXT = (
    "the a of to and in is that for it as with was on be by this are from or have an they which one you were "
    "her all she there would their we him been has when who will more no if out so said what up its about into "
    "than them can only other new some could time these two may then do first any my now such like our over "
    "man me even most made after also did many before must through back years where much your way well down "
    "should because each just those people how too little state good very make world still own see men work "
    "long get here between both life being under never day same another know while last might us great old "
    "year off come since against go came right used take three water river garden kitchen bread recipe "
    "engine bridge mountain planet science history music painting student teacher library window coffee"
)
_WORDS = _WORD_TEXT.split()
_TOPICS = (
    "photosynthesis", "the water cycle", "compound interest", "a binary search", "the French revolution",
    "how vaccines work", "baking sourdough", "plate tectonics", "recursion", "the stock market",
    "jazz improvisation", "bicycle maintenance", "the moon landing", "prime numbers", "composting",
    "solar panels", "the printing press", "chess openings", "volcanoes", "sleep hygiene",
)


def _sentence(rng: random.Random, n: int) -> str:
    words = [rng.choice(_WORDS) for _ in range(n)]
    return " ".join(words).capitalize() + "."


def _answer(rng: random.Random) -> str:
    return " ".join(_sentence(rng, rng.randint(8, 16)) for _ in range(rng.randint(3, 5)))


def _question(rng: random.Random, topic: str) -> str:
    return f"Please explain {topic} and why it matters. " + _sentence(rng, rng.randint(5, 9))


@dataclass
class TinySources:
    """Three small sources (one per tier) with a few broken records and cross-source duplicates."""

    root: Path
    sources: list[dict[str, Any]] = field(default_factory=list)
    bad_records: int = 0
    records: int = 0


def write_tiny_sources(root: Path, seed: int = 7, per_source: int = 14) -> TinySources:
    """openai-format expert JSONL, a ShareGPT JSON array and Alpaca JSONL, with duplicates and bad rows."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = TinySources(root)
    topics = list(_TOPICS)

    expert = []
    for i in range(per_source):
        t = topics[i % len(topics)]
        expert.append({"messages": [
            {"role": "system", "content": "You are a careful, friendly tutor."},
            {"role": "user", "content": _question(rng, t)},
            {"role": "assistant", "content": _answer(rng)},
        ]})
    lines = [json.dumps(r) for r in expert]
    lines.insert(3, '{"messages": [{"role": "user", "content": "broken json"')  # broken JSON
    lines.append(json.dumps({"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]}))
    (root / "expert.jsonl").write_text("\n".join(lines) + "\n")

    share = []
    for _ in range(per_source):
        t = rng.choice(topics)
        share.append({"id": f"sg{len(share)}", "conversations": [
            {"from": "human", "value": _question(rng, t)},
            {"from": "gpt", "value": _answer(rng)},
            {"from": "human", "value": "Can you give one more detail? " + _sentence(rng, 6)},
            {"from": "gpt", "value": _answer(rng)},
        ]})
    for r in expert[:2]:  # exact duplicates of expert conversations (dedup keeps the expert copy)
        share.append({"id": f"sg{len(share)}", "conversations": [
            {"from": "system" if m["role"] == "system" else ("human" if m["role"] == "user" else "gpt"),
             "value": m["content"]} for m in r["messages"]
        ]})
    share.append({"id": "noreply", "conversations": [{"from": "human", "value": "Is anyone there?"}]})
    (root / "sharegpt.json").write_text(json.dumps(share))

    alpaca = []
    for _ in range(per_source):
        alpaca.append({"instruction": _question(rng, rng.choice(topics)), "input": rng.choice(["", "N/A"]),
                       "output": _answer(rng)})
    lines = [json.dumps(r) for r in alpaca]
    lines.append(json.dumps({"instruction": "Missing its output field."}))
    (root / "alpaca.jsonl").write_text("\n".join(lines) + "\n")

    out.sources = [
        {"name": "expert_chat", "path": str(root / "expert.jsonl"), "format": "openai", "tier": "expert"},
        {"name": "crowd_sharegpt", "path": str(root / "sharegpt.json"), "format": "sharegpt", "tier": "crowdsourced"},
        {"name": "synth_alpaca", "path": str(root / "alpaca.jsonl"), "format": "alpaca", "tier": "synthetic"},
    ]
    out.bad_records = 4
    out.records = len(expert) + 2 + len(share) + len(alpaca) + 1
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


#: Settings that make a whole curate-and-train run take seconds: a tiny model, two optimizer steps.
TINY_RUN: dict[str, dict[str, Any]] = {
    "tokenizer": {"vocab_size": 400, "min_frequency": 1},
    "pack": {"max_seq_len": 512},
    "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2},
    "train": {"max_steps": 2, "micro_batch_size": 2, "warmup_steps": 0, "save_every": 0, "eval_max_rows": 4},
    "before_after": {"enabled": False},  # two model loads and generation: on only where a test looks at it
}


def write_config(path: Path, sources: list[dict[str, Any]], output_dir: Path, name: str = "tiny",
                 sections: dict[str, dict[str, Any]] | None = None) -> Path:
    """A TOML run config: the given sources, TINY_RUN, then `sections` merged over it."""
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in TINY_RUN.items()}
    for k, v in (sections or {}).items():
        merged.setdefault(k, {}).update(v)
    lines = [f"name = {_toml_value(name)}", f"output_dir = {_toml_value(str(output_dir))}", ""]
    for s in sources:
        lines.append("[[sources]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in s.items()]
        lines.append("")
    for section, values in merged.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="session")
def tiny_sources(tmp_path_factory: pytest.TempPathFactory) -> TinySources:
    return write_tiny_sources(tmp_path_factory.mktemp("tiny-sources"))


# --------------------------------------------------------------------------- a real Prefect server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PrefectServer:
    url: str
    home: Path
    env: dict[str, str]
    proc: subprocess.Popen


def stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process group we started (start_new_session=True), then SIGKILL what is left."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """`prefect server start` on 127.0.0.1 and a free port, with its own PREFECT_HOME; stopped at the end."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    tmp = tmp_path_factory.mktemp("prefect-tmp")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_UI_API_URL": url,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "TMPDIR": str(tmp),  # the runner leaves runner_storage/ and dask scratch space behind
    }
    server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    log = open(home / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=home,
    )
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited: {(home / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield PrefectServer(url, home, env, proc)
    finally:
        if "prefect" in sys.modules:  # send buffered flow-run logs while the server still listens
            from prefect.logging.handlers import APILogHandler

            APILogHandler().flush()
        stop_group(proc)
        log.close()


@pytest.fixture
def server_settings(prefect_server: PrefectServer) -> Iterator[PrefectServer]:
    """Point this process's Prefect client at the test server for one test."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.url}):
        yield prefect_server
