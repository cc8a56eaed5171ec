"""Safe by construction: a user's folder is never written into, one run per directory, children die
with sftforge, a full disk names its path and leaves no debris, templates are bounded, the
manifest's config hash is about the data only."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, TinySources, write_config

from flows.cli import main
from pipeline.core.rundir import (
    LOCK_NAME,
    MARKER_NAME,
    RunDirError,
    atomic_write_bytes,
    claim_run_dir,
    remove_outputs,
    run_lock,
    sweep_temporaries,
)


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _user_folder(root: Path) -> Path:
    for rel, text in (("shards/train-00000.parquet", "mine"), ("tokenizer/tokenizer.json", "{}"),
                      ("curated/part-00000.parquet", "x"), ("notes.txt", "thesis draft"),
                      ("manifest.json", "{}")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_a_folder_sftforge_did_not_make_is_refused_and_left_untouched(
    tmp_path: Path, tiny_sources: TinySources, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _user_folder(tmp_path / "mine")
    before = _tree(out)
    cfg = write_config(tmp_path / "c.toml", tiny_sources.sources, out)
    for command in ("curate", "run"):
        assert main([command, str(cfg)]) == 2
        err = capsys.readouterr().err
        assert str(out) in err and "not made by sftforge" in err and "notes.txt" in err and "shards/" in err
        assert "prefect" not in err.lower()  # refused before a server or a flow run existed
    assert _tree(out) == before and not (out / MARKER_NAME).exists()


def test_claim_marks_a_new_or_empty_folder_and_accepts_its_own(tmp_path: Path) -> None:
    rd = claim_run_dir(tmp_path / "new")
    assert json.loads(rd.marker.read_text())["made_by"] == "sftforge"
    (tmp_path / "empty").mkdir()
    claim_run_dir(tmp_path / "empty")
    (rd.root / "shards").mkdir()
    claim_run_dir(rd.root)  # its own, with content: fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        claim_run_dir(tmp_path / "file")


def test_outputs_are_deleted_only_inside_a_marked_run_directory(tmp_path: Path) -> None:
    user = _user_folder(tmp_path / "user")
    before = _tree(user)
    with pytest.raises(RunDirError, match="nothing proves sftforge wrote them"):
        remove_outputs(user / "shards", "train-*.parquet")
    assert _tree(user) == before
    rd = claim_run_dir(tmp_path / "run")
    (rd.shards).mkdir()
    for name in ("train-00000.parquet", "val-00000.parquet", "notes.txt"):
        (rd.shards / name).write_text("x")
    assert [p.name for p in remove_outputs(rd.shards, "train-[0-9][0-9][0-9][0-9][0-9].parquet")] == [
        "train-00000.parquet"]
    assert sorted(p.name for p in rd.shards.iterdir()) == ["notes.txt", "val-00000.parquet"]


_HOLD = """
import sys, time
from pipeline.core.rundir import run_lock
with run_lock(sys.argv[1], command="holder"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_run_on_a_held_directory_exits_2_naming_the_holder(
    tmp_path: Path, tiny_sources: TinySources, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    claim_run_dir(out)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        cfg = write_config(tmp_path / "c.toml", tiny_sources.sources, out)
        assert main(["curate", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and socket.gethostname() in err and "in use by another sftforge run" in err
        assert main(["train", str(out)]) == 2
        assert f"pid {holder.pid}" in capsys.readouterr().err
        with pytest.raises(RunDirError, match=f"pid {holder.pid}"), run_lock(out):
            pass
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (kill -9: no cleanup ran): its lock file is taken over, with a warning
    warnings: list[str] = []
    with run_lock(out, warn=warnings.append):
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert len(warnings) == 1 and f"pid {holder.pid}" in warnings[0] and "gone" in warnings[0]
    with run_lock(out, warn=warnings.append), run_lock(out, warn=warnings.append):  # re-entrant, released cleanly
        pass
    assert len(warnings) == 1 and (out / LOCK_NAME).read_text() == ""


def test_a_failed_write_removes_its_temporary_file_and_names_the_path(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "d" / "f.bin"

    def full(*a, **k):  # noqa: ANN002, ANN003
        raise OSError(28, "No space left on device")

    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=str(target)) as e:
        atomic_write_bytes(target, b"x" * 100)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert e.value.errno == 28 and list((tmp_path / "d").iterdir()) == []


def test_sweep_removes_only_debris_of_dead_writers(tmp_path: Path) -> None:
    rd = claim_run_dir(tmp_path / "run")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (rd.shards).mkdir()
    stale = rd.shards / f".train-00000.parquet.tmp-{dead.pid}"
    live = rd.shards / f".train-00001.parquet.tmp-{os.getppid()}"
    keep = rd.shards / ".hidden.tmp"
    for p in (stale, live, keep):
        p.write_text("x")
    assert sweep_temporaries(rd.root) == [stale]
    assert live.exists() and keep.exists()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_disk_full_names_stage_and_path_and_leaves_no_debris(tmp_path: Path, tiny_sources: TinySources) -> None:
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "600k"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights)")
    try:
        out = small / "run"
        cfg = write_config(tmp_path / "c.toml", tiny_sources.sources, out,
                           sections={"tokenizer": {"vocab_size": 8000}, "train": {"enabled": False}})
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"), "DO_NOT_TRACK": "1"}
        env.pop("PREFECT_API_URL", None)
        # fill the disk but for a little, so some stage runs out of space
        filler = small / "filler"
        free = os.statvfs(small).f_bavail * os.statvfs(small).f_frsize
        filler.write_bytes(b"\0" * max(0, free - 60_000))
        proc = subprocess.run([sys.executable, "-m", "flows.cli", "curate", str(cfg)], cwd=REPO, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 1, proc.stderr
        assert "No space left on device" in proc.stderr and "stage " in proc.stderr and str(out) in proc.stderr
        debris = [p for p in out.rglob("*") if ".tmp-" in p.name]
        assert debris == []
        assert not (out / "manifest.json").exists()
        filler.unlink()  # space again: the same command now completes
        proc = subprocess.run([sys.executable, "-m", "flows.cli", "curate", str(cfg)], cwd=REPO, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert [p for p in out.rglob("*") if ".tmp-" in p.name] == []
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def _descendants(pid: int) -> set[int]:
    """Every live process whose chain of parents (by /proc) reaches `pid`, or whose session is `pid`'s."""
    found: set[int] = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[3]) == pid:  # session id == the CLI's (it leads its session)
            found.add(int(d.name))
    return found


@pytest.mark.slow
def test_kill_9_of_sftforge_leaves_no_process_of_its_own(tmp_path: Path, tiny_sources: TinySources) -> None:
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.toml", tiny_sources.sources, out, sections={"train": {"enabled": False}})
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home"), "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "curate", str(cfg)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # a bound on waiting, not a time limit on sftforge
        while len(_descendants(proc.pid) - {proc.pid}) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)  # until the server (a child) is up
        children = _descendants(proc.pid) - {proc.pid}
        assert children, "sftforge started no child process"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while _descendants(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _descendants(proc.pid) == set(), "children outlived a killed sftforge"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # and a rerun works at once (the lock of the dead run is taken over)
    rerun = subprocess.run([sys.executable, "-m", "flows.cli", "curate", str(cfg)], cwd=REPO, env=env,
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert (out / "manifest.json").is_file()


def test_template_rendering_is_bounded(monkeypatch) -> None:
    import pipeline.render.templates as t

    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    huge = "{{ 'x' * 4000000000 }}{% for m in messages %}{{ m.content }}{% endfor %}"
    tpl = t.make_jinja_template("huge", huge, bos_token=None, eos_token="</s>")
    with pytest.raises(t.TemplateError, match="limit"):
        tpl.render(msgs)
    power = "{{ 10 ** 100000000 }}"
    with pytest.raises(t.TemplateError, match="power"):
        t.make_jinja_template("pow", power, bos_token=None, eos_token="</s>").render(msgs)
    loops = "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'y' * 1000 }}{% endfor %}{% endfor %}"
    with pytest.raises(t.TemplateError, match="more than"):
        t.make_jinja_template("loops", loops, bos_token=None, eos_token="</s>").render(msgs)
    monkeypatch.setattr(t, "MAX_RENDER_SECONDS", 0.0)
    slow = "{% for i in range(100000) %}{% for j in range(100) %}.{% endfor %}{% endfor %}"
    with pytest.raises(t.TemplateError, match="took more than"):
        t.make_jinja_template("slow", slow, bos_token=None, eos_token="</s>").render(msgs)


def test_config_hash_is_about_the_data_only(tmp_path: Path, tiny_sources: TinySources) -> None:
    from schemas.config import load_config

    a = load_config(write_config(tmp_path / "a.toml", tiny_sources.sources, tmp_path / "A", name="a"), [])
    b = load_config(write_config(tmp_path / "b.toml", tiny_sources.sources, tmp_path / "B", name="b",
                                 sections={"train": {"max_steps": 3}, "runner": {"max_workers": 1}}), [])
    c = load_config(write_config(tmp_path / "c.toml", tiny_sources.sources, tmp_path / "A", name="a",
                                 sections={"pack": {"max_seq_len": 64}}), [])
    assert a.data_hash() == b.data_hash() != c.data_hash()
