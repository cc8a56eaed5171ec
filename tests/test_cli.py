"""`sftforge`: user errors are one line and exit 2 (never a traceback); report prints the summary;
the trainer launcher streams output and fails loudly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, PrefectServer, TinySources, write_config

from flows.cli import main
from flows.launch import TrainingFailed, stream_subprocess, torchrun_command
from pipeline.core.ledger import ledger_rows, write_ledger_part
from pipeline.ingest.canonical import from_records
from pipeline.report.summary import build_report
from schemas.config import load_config


def _err(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_missing_and_invalid_configs_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         tiny_sources: TinySources) -> None:
    err = _err(capsys, ["curate", str(tmp_path / "nope.toml")])
    assert err.strip() == f"sftforge: error: {tmp_path / 'nope.toml'}: config file not found"
    cfg = write_config(tmp_path / "bad.toml", tiny_sources.sources, tmp_path / "run", sections={"pack": {"max_seq": 1}})
    err = _err(capsys, ["run", str(cfg)])
    assert "pack.max_seq: unknown key" in err and str(cfg) in err
    err = _err(capsys, ["curate", str(cfg), "--set", "nonsense"])
    assert "expected KEY=VALUE" in err
    missing = [{**tiny_sources.sources[0], "path": str(tmp_path / "gone.jsonl")}]
    cfg = write_config(tmp_path / "missing.toml", missing, tmp_path / "run")
    err = _err(capsys, ["curate", str(cfg)])
    assert f"source 'expert_chat': {tmp_path / 'gone.jsonl'}: source path does not exist" in err


def test_gate_and_serve_need_a_server(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      tiny_sources: TinySources, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    cfg = write_config(tmp_path / "gate.toml", tiny_sources.sources, tmp_path / "run", sections={"gate": {"enabled": True}})
    assert "gate.require_approval needs a Prefect server" in _err(capsys, ["run", str(cfg)])
    assert "serve needs a Prefect server" in _err(capsys, ["serve", "--config", str(cfg)])


def test_report_and_train_refuse_what_is_not_a_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "no such run directory" in _err(capsys, ["report", str(tmp_path / "none")])
    assert "no report/report.json" in _err(capsys, ["report", str(tmp_path)])
    assert "not a sftforge run directory" in _err(capsys, ["train", str(tmp_path)])
    from pipeline.core.rundir import claim_run_dir

    claim_run_dir(tmp_path / "marked")
    assert "no manifest.json" in _err(capsys, ["train", str(tmp_path / "marked")])
    assert "neither a config file nor a run directory" in _err(capsys, ["train", str(tmp_path / "x")])


def test_report_prints_the_summary_and_names_the_html(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      tiny_sources: TinySources) -> None:
    cfg_path = write_config(tmp_path / "c.toml", tiny_sources.sources, tmp_path / "run")
    rd = tmp_path / "run"
    df = from_records([{"conversation_id": "c1", "origin": "expert_chat:1", "source": "expert_chat", "tier": "expert",
                        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    write_ledger_part(rd, "quality", ledger_rows(df, stage="quality", outcome="dropped", reason="quality.too_short"))
    build_report(rd, load_config(cfg_path))
    assert main(["report", str(rd)]) == 0
    out = capsys.readouterr().out
    assert "Run tiny" in out and "quality.too_short" in out and "read 1  kept 0" in out
    assert f"HTML report: {rd / 'report' / 'report.html'}" in out
    assert main(["report", str(rd), "--config", str(cfg_path)]) == 0  # rebuilt from the run directory
    assert "quality.too_short" in capsys.readouterr().out


def test_trainer_output_streams_and_a_failure_carries_its_tail() -> None:
    lines: list[str] = []
    stream_subprocess([sys.executable, "-c", "print('step 1'); print('step 2')"], lines.append)
    assert lines == ["step 1", "step 2"]
    with pytest.raises(TrainingFailed, match=r"status 3(.|\n)*boom"):
        stream_subprocess([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], lines.append)
    cmd = torchrun_command(Path("/r"), "c.toml", ["train.max_steps=2"], 2)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "trainer", "/r",
                       "--config", "c.toml", "--set", "train.max_steps=2"]


@pytest.mark.slow
@pytest.mark.server
def test_a_failing_flow_is_one_line_and_exit_1(tmp_path: Path, prefect_server: PrefectServer,
                                               tiny_sources: TinySources) -> None:
    """A stage that fails at run time (a tokenizer file that exists, so preflight passes, but is not a
    tokenizer): the flow fails, the CLI says so briefly.
    (A subprocess: the CLI reconfigures Prefect's console logging, which must not leak into pytest.)"""
    bad = tmp_path / "tokenizer.json"
    bad.write_text("this is not a tokenizer")
    cfg = write_config(tmp_path / "c.toml", tiny_sources.sources, tmp_path / "run",
                       sections={"tokenizer": {"path": str(bad)}})
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "curate", str(cfg)], cwd=REPO, env=prefect_server.env,
                          capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    last = proc.stderr.strip().splitlines()[-2:]
    assert last[0].startswith("sftforge: curate failed: ") and str(bad) in last[0]
    assert "--debug" in last[1]


@pytest.mark.slow
@pytest.mark.server
def test_nothing_kept_is_an_outcome_with_a_report_and_exit_4(tmp_path: Path, prefect_server: PrefectServer) -> None:
    """Every record of every source fails: the report is still written and says where they went;
    no manifest (nothing to train on); the CLI exits 4 naming the sources and reasons."""
    src = tmp_path / "bad.jsonl"
    src.write_text("".join(f'{{"instruction": "q{i}", "output": ""}}\n' for i in range(5)) + "not json\n")
    cfg = write_config(tmp_path / "c.toml", [{"name": "bad", "path": str(src), "format": "alpaca", "tier": "expert"}],
                       tmp_path / "run")
    for command in ("curate", "run"):
        proc = subprocess.run([sys.executable, "-m", "flows.cli", command, str(cfg)], cwd=REPO,
                              env=prefect_server.env, capture_output=True, text=True)
        assert proc.returncode == 4, proc.stderr
        assert "NOTHING KEPT" in proc.stdout and "bad" in proc.stdout and "schema." in proc.stdout
        assert (tmp_path / "run" / "report" / "report.html").is_file()
        assert not (tmp_path / "run" / "manifest.json").exists() and not (tmp_path / "run" / "model").exists()


@pytest.mark.slow
def test_server_start_is_reused_by_later_commands_and_stops(tmp_path: Path, tiny_sources: TinySources) -> None:
    """`sftforge server start` leaves a server for this PREFECT_HOME; curate uses it (its flow run is
    on that server) instead of starting its own; `server stop` ends it."""
    import httpx

    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"), "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)

    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flows.cli", *argv], cwd=REPO, env=env, capture_output=True,
                              text=True)

    started = cli("server", "start")
    assert started.returncode == 0 and "started" in started.stdout, started.stderr
    url = started.stdout.split(" at ")[1].split(" ")[0]
    try:
        assert "already running" in cli("server", "start").stdout
        cfg = write_config(tmp_path / "c.toml", tiny_sources.sources, tmp_path / "run", sections={"train": {"enabled": False}})
        run = cli("curate", str(cfg))
        assert run.returncode == 0, run.stderr
        runs = httpx.post(f"{url}/flow_runs/filter", json={}).json()
        assert any(r["state_type"] == "COMPLETED" for r in runs)
    finally:
        stopped = cli("server", "stop")
    assert "stopped" in stopped.stdout
    assert cli("server", "status").returncode == 1


def test_preflight_reports_every_input_problem_once_before_any_server(tmp_path: Path, tiny_sources: TinySources,
                                                                      capsys: pytest.CaptureFixture[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Each kind of input error: exit 2, one line per problem naming the file, and no server started."""
    import flows.procs

    def no_server(*a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("a Prefect server was started before the inputs were checked")

    monkeypatch.setattr(flows.procs, "local_prefect_server", no_server)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    (tmp_path / "notes.csv").write_text("a,b\n")
    (tmp_path / "data.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"foo": 1}\n{"bar": 2}\n')
    bad_jinja = tmp_path / "t.jinja"
    bad_jinja.write_text("{% for m in messages %}{{ m.content }")
    sources = [
        {"name": "csv", "path": str(tmp_path / "notes.csv"), "tier": "expert"},
        {"name": "empty", "path": str(tmp_path / "empty"), "tier": "expert"},
        {"name": "odd", "path": str(odd), "tier": "expert"},
        tiny_sources.sources[0],
    ]
    cfg = write_config(tmp_path / "c.toml", sources, tmp_path / "out", sections={"template": {"name": str(bad_jinja)}})
    with cfg.open("a") as f:
        f.write(f'\n[[quality.contamination.benchmarks]]\nname = "mmlu"\npath = "{tmp_path / "mmlu.jsonl"}"\n'
                'field = "question"\n')
    err = _err(capsys, ["curate", str(cfg)])
    lines = [ln for ln in err.splitlines() if ln.startswith("  - ")]
    assert len(lines) == 5 and len(set(lines)) == 5, err
    assert any("notes.csv" in ln and "unsupported file type" in ln for ln in lines)
    assert any("empty" in ln and "no .jsonl" in ln for ln in lines)
    assert any("odd.jsonl" in ln and "cannot tell the format" in ln for ln in lines)
    assert any("mmlu" in ln and "is not a file" in ln for ln in lines)
    assert any(ln.startswith(f"  - template.name = '{bad_jinja}'") for ln in lines)
    assert not (tmp_path / "out").exists()


def test_inspect_shows_formats_records_unread_fields_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    """`sftforge inspect` on every format: the detected format per file, the canonical messages, a
    field the reader ignores, a record that would be quarantined, and --render's supervised mark."""
    import json

    d = tmp_path / "mixed"
    d.mkdir()
    (d / "alpaca.jsonl").write_text(json.dumps({"instruction": "Add 2 and 2.", "input": "", "output": "4",
                                                "rationale": "2 + 2 = 4"}) + "\n" + '{"instruction": 3}\n')
    (d / "dolly.jsonl").write_text(json.dumps({"instruction": "Name a fruit.", "context": "", "response": "Apple",
                                               "category": "open_qa"}) + "\n")
    (d / "sharegpt.json").write_text(json.dumps([{"conversations": [{"from": "human", "value": "Hi"},
                                                                    {"from": "gpt", "value": "Hello!"}]}]))
    (d / "openai.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "Q?"},
                                                             {"role": "assistant", "content": "A."}]}) + "\n")
    (d / "pc.jsonl").write_text(json.dumps({"prompt": "Say yes.", "completion": "yes"}) + "\n")
    (d / "oasst.jsonl").write_text(json.dumps({"message_id": "a", "parent_id": None, "text": "Why?", "role": "prompter",
                                               "lang": "en", "deleted": False, "review_result": True}) + "\n")
    cfg = write_config(tmp_path / "c.toml", [{"name": "mixed", "path": str(d), "tier": "expert"}], tmp_path / "out")
    assert main(["inspect", str(cfg), "-n", "2", "--render"]) == 0
    out = capsys.readouterr().out
    for fmt in ("alpaca", "dolly", "sharegpt", "openai", "prompt_completion", "oasst"):
        assert f": format {fmt}" in out, fmt
    assert "fields not read: rationale" in out  # a text field the alpaca reader does not read
    assert "quarantined as schema.wrong_type" in out or "quarantined as schema.missing_field" in out
    assert "[[4<|im_end|>]]" in out  # the supervised part of the rendered alpaca record
    assert not (tmp_path / "out").exists()  # inspect writes nothing


def test_init_writes_a_starter_config_that_loads(tmp_path: Path, tiny_sources: TinySources,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from schemas.config import load_config

    paths = [s["path"] for s in tiny_sources.sources]
    out = tmp_path / "start.toml"
    assert main(["init", *paths, "-o", str(out)]) == 0
    cfg = load_config(out, [])
    assert [str(s.path) for s in cfg.sources] == paths
    assert [s.format for s in cfg.sources] == ["openai", "sharegpt", "alpaca"]  # each detected from its file
    assert "TODO" in out.read_text()
    assert main(["init", *paths, "-o", str(out)]) == 2  # never overwrites without --force
    assert "exists" in capsys.readouterr().err
