"""The Prefect flows `curate` (data only) and `curate-and-train`: one task per pipeline stage.

Tasks pass paths, never DataFrames. The stages, their inputs, config sections, code and outputs
come from one registry (flows.stages.STAGES). Every stage task is cached under a key built from
content (flows.cache): a re-run skips unchanged stages, and a changed input, config section or
stage code re-runs that stage and everything downstream (their inputs' bytes change).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.context import TaskRunContext
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.cache import code_version, hash_files, outputs_intact, record_outputs, stage_key
from flows.stages import STAGES, TRAIN
from schemas.config import RunConfig, load_config
from schemas.config_flow import RunnerConfig
from schemas.config_sources import SourceConfig


def _transient_io_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what a retry can fix: an OSError such as a network-filesystem hiccup. A missing file,
    a permission problem or bad data fails at once, with the stage's own message."""
    try:
        state.result()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return False
    except OSError as e:
        return e.errno not in (errno.ENOSPC, errno.EDQUOT)  # a full disk stays full

    except BaseException:  # noqa: BLE001 - anything else is not transient
        return False
    return False


#: Retries for tasks that mostly read and write files: a flaky disk or NFS hiccup should not fail a run.
IO_RETRIES: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 2, "retry_condition_fn": _transient_io_error}


def _key_param(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """The flow computes each stage's content key (flows.cache.stage_key) and passes it in."""
    return parameters["key"]


def _cached(name: str, retries: bool = True, **kw: Any) -> dict[str, Any]:
    opts: dict[str, Any] = {"name": name, "cache_key_fn": _key_param, "persist_result": True, **kw}
    if retries:
        opts.update(IO_RETRIES)
    return opts


def as_json(result: Any) -> Any:
    """A stage result as plain JSON (typed results through their to_json; Paths as strings)."""
    if hasattr(result, "to_json"):
        return as_json(result.to_json())
    if isinstance(result, dict):
        return {str(k): as_json(v) for k, v in result.items()}
    if isinstance(result, list | tuple):
        return [as_json(v) for v in result]
    return str(result) if isinstance(result, Path) else result


def _parts_of(result: Any) -> list[str]:
    """The part files (Parquet, or Arrow IPC for the encodings) a stage handed on."""
    parts = result.parts if hasattr(result, "parts") else result.get("parts", [])
    return [str(p) for p in parts]


# --------------------------------------------------------------------------- tasks


@task(**_cached("ingest"), task_run_name="ingest-{source.name}")
def ingest_task(source: SourceConfig, run_dir: str, key: str, pool: Any = None) -> dict[str, Any]:
    """Read one source into canonical parts; its quarantine and ledger part. `pool`: a process pool
    (ingest_processes) to read it in, else this thread reads it."""
    from pipeline.ingest.stage import ingest_source

    result = pool.submit(ingest_source, source, Path(run_dir)).result() if pool else ingest_source(source, Path(run_dir))
    stats = as_json(result)
    record_outputs(run_dir, "ingest", key, source.name)
    logger = get_run_logger()
    logger.info(
        "%s: read %s, kept %s, quarantined %s", source.name, stats.get("read"), stats.get("kept"), stats.get("quarantined")
    )
    for warning in stats.get("warnings") or []:  # files not read, empty sources: in the run's log too
        logger.warning(warning)
    return stats


@task(**_cached("stage"), task_run_name="{name}")
def stage_task(name: str, inputs: dict[str, list[str]], run_dir: str, cfg: RunConfig, key: str) -> dict[str, Any]:
    """One data stage of the registry (flows.stages), on the parts of its input stages."""
    result = as_json(STAGES[name].run({k: [Path(p) for p in v] for k, v in inputs.items()}, Path(run_dir), cfg))
    record_outputs(run_dir, name, key)
    if "seconds" in result:
        get_run_logger().info("%s: %s in, %s out, %.1f s", name, result.get("records_in"), result.get("records_out"),
                              result["seconds"])
    return result


@task(name="finalize-ledger")
def finalize_task(run_dir: str, records_read: int) -> dict[str, int]:
    """Kept rows, then the balance check: read == kept + quarantined + dropped, or the run fails."""
    from pipeline.core.ledger import finalize_ledger

    counts = finalize_ledger(run_dir, records_read)
    get_run_logger().info("ledger balances: read %d = %s", records_read, counts)
    return counts


@task(name="write-manifest", **IO_RETRIES)
def manifest_task(run_dir: str, manifest: dict[str, Any]) -> str:
    """manifest.json, last and atomically: the run directory is complete."""
    from pipeline.core.manifest import write_manifest

    return str(write_manifest(Path(run_dir), manifest))


@task(name="build-report", **IO_RETRIES)
def report_task(run_dir: str, cfg: RunConfig, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """report/report.json + report/report.html, and the same summary as artifacts on the flow run."""
    from flows.artifacts import publish_report
    from pipeline.report.summary import build_report

    summary = build_report(Path(run_dir), cfg, manifest)
    publish_report(summary)
    return summary


@task(**_cached("train", retries=False))
def train_task(run_dir: str, cfg: RunConfig, config_path: str, overrides: list[str], key: str) -> dict[str, Any]:
    """Train on the shards: in this process, or under torchrun when train.nproc > 1."""
    logger = get_run_logger()
    nproc = int(getattr(cfg.train, "nproc", 1) or 1)
    if nproc > 1:
        from flows.launch import stream_subprocess, torchrun_command

        cmd = torchrun_command(Path(run_dir), config_path, overrides, nproc)
        logger.info("launching %s", " ".join(cmd))
        stream_subprocess(cmd, logger.info)
        result: dict[str, Any] = {"nproc": nproc, "model": str(Path(run_dir) / "model")}
    else:
        from trainer.fit import train

        result = as_json(train(Path(run_dir), cfg, log=logger.info))
    record_outputs(run_dir, "train", key)
    return result


@task(name="before-after")
def compare_task(run_dir: str, cfg: RunConfig) -> dict[str, Any] | None:
    """The model's answers before and after training, side by side (report/before_after.json)."""
    from trainer.before_after import compare

    return as_json(compare(Path(run_dir), cfg))


# --------------------------------------------------------------------------- wiring


def make_task_runner(rc: RunnerConfig) -> TaskRunner:
    """The runner for the mapped tasks: a thread pool, or Dask (a local cluster or a scheduler address)."""
    if rc.kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as e:  # pragma: no cover - prefect-dask is a dependency
            raise RuntimeError("runner.kind = 'dask' needs prefect-dask: pip install prefect-dask") from e
        if rc.address:
            return DaskTaskRunner(address=rc.address)
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": rc.n_workers,
                "threads_per_worker": rc.threads_per_worker,
                "processes": True,
                "dashboard_address": None,
            }
        )
    return ThreadPoolTaskRunner(max_workers=rc.max_workers)


@contextmanager
def ingest_processes(cfg: RunConfig) -> Iterator[Any]:
    """The process pool the thread runner's ingest tasks hand their sources to (runner.processes),
    or None: one source, one process asked for, the Dask runner (its workers are processes), or a
    daemonic process (which may not start children)."""
    import multiprocessing

    n = min(cfg.runner.processes, len(cfg.sources))
    if cfg.runner.kind != "thread" or n <= 1 or multiprocessing.current_process().daemon:
        yield None
        return
    from concurrent.futures import ProcessPoolExecutor

    from pipeline.core.procpool import die_with_parent

    with ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"),
                             initializer=die_with_parent) as pool:
        yield pool


def describe_runner(rc: RunnerConfig) -> str:
    """Where the mapped tasks run, in words (for the log)."""
    if rc.kind == "thread":
        return "a thread pool" + (f" (sources read in up to {rc.processes} processes)" if rc.processes > 1 else "")
    return f"the Dask cluster at {rc.address}" if rc.address else f"a local Dask cluster of {rc.n_workers} worker(s)"


class StageIOError(OSError):
    """A stage could not read or write a file (a full disk, a lost mount): names the stage and the path."""


@contextmanager
def stage_errors(stage: str, run_dir: Path) -> Iterator[None]:
    """An OSError inside a stage says which stage and which path; its temporary files are removed."""
    try:
        yield
    except StageIOError:
        raise
    except OSError as e:
        from pipeline.core.rundir import sweep_temporaries

        sweep_temporaries(run_dir)
        where = f" ({e.filename})" if e.filename and str(e.filename) not in str(e) else ""
        hint = ": free some space or choose another output_dir" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise StageIOError(e.errno, f"stage {stage} failed writing in {run_dir}: {e.strerror or e}{where}{hint}",
                           e.filename) from e


def _run_stage(task_fn: Any, stage: str, run_dir: Path, key: str, source: str | None = None, **params: Any) -> Any:
    """Call a cached stage task; refresh its cache when its outputs on disk are not the ones it recorded."""
    fresh = not outputs_intact(run_dir, stage, key, source)
    with stage_errors(stage, run_dir):
        return task_fn.with_options(refresh_cache=fresh)(run_dir=str(run_dir), key=key, **params)


def start_run(run_dir: Path) -> None:
    """A run starts: the folder must be a run directory (claimed by the caller, who holds its lock);
    the old manifest goes first (a run is incomplete until it writes a new one), and so does the debris
    of writes a killed run left behind."""
    from pipeline.core.manifest import remove_manifest
    from pipeline.core.rundir import sweep_temporaries

    remove_manifest(run_dir)
    for p in sweep_temporaries(run_dir):
        get_run_logger().info("removed %s, left by an interrupted write", p)


@contextmanager
def run_directory(cfg: RunConfig, flow_name: str) -> Iterator[Path]:
    """Claim the config's output folder and hold its lock for the block (re-entrant: the CLI holds it
    already when it runs the flow; a served deployment's flow run takes it here)."""
    from pipeline.core.rundir import claim_run_dir, run_lock

    run_dir = Path(cfg.output_dir).resolve()
    claim_run_dir(run_dir)
    with run_lock(run_dir, command=f"flow {flow_name}", warn=get_run_logger().warning):
        yield run_dir


def curate_run(cfg: RunConfig) -> dict[str, Any]:
    """Every curation stage, in order, inside the calling flow (which holds the run directory's lock).
    Returns stage stats and counts."""
    logger = get_run_logger()
    run_dir = Path(cfg.output_dir).resolve()
    start_run(run_dir)

    # 1. ingest: one task per source, in parallel on the configured runner.
    code = {name: code_version(*st.code) for name, st in STAGES.items()}
    keys = {s.name: stage_key("ingest", run_dir, hash_files([s.path]), s.model_dump_json(), code["ingest"])
            for s in cfg.sources}
    logger.info("ingesting %d source(s) in parallel on %s", len(cfg.sources), describe_runner(cfg.runner))
    with make_task_runner(cfg.runner) as runner, ingest_processes(cfg) as pool:
        futures = []
        for s in cfg.sources:
            fresh = not outputs_intact(run_dir, "ingest", keys[s.name], s.name)
            params = {"source": s, "run_dir": str(run_dir), "key": keys[s.name], "pool": pool}
            futures.append(runner.submit(ingest_task.with_options(refresh_cache=fresh), params))
        with stage_errors("ingest", run_dir):
            ingest = [f.result() for f in futures]
    records_read = sum(int(s["read"]) for s in ingest)
    parts: dict[str, list[str]] = {"ingest": [p for s in ingest for p in _parts_of(s)]}

    # 2... every other data stage, in registry order, keyed by the bytes of its input parts, its config
    # sections, the files its config names and its code.
    stats: dict[str, Any] = {"ingest": ingest}
    for name, st in STAGES.items():
        if name == "ingest":
            continue
        inputs = {i: parts[i] for i in st.inputs}
        key = stage_key(name, run_dir, *(hash_files(inputs[i]) for i in st.inputs), cfg.section_hash(*st.sections),
                        hash_files(st.config_files(cfg)), code[name])
        stats[name] = _run_stage(stage_task, name, run_dir, key, name=name, inputs=inputs, cfg=cfg)
        parts[name] = _parts_of(stats[name])
        logger.info("%s: %d part(s) out", name, len(parts[name]))

    # 6-8. the ledger must balance before anything is published; then the report, then the manifest,
    # truly last: its presence says everything before it is on disk.
    from pipeline.core.manifest import NothingKept, build_manifest

    with stage_errors("finalize", run_dir):
        counts = finalize_task(str(run_dir), records_read)
    try:
        manifest_dict: dict[str, Any] | None = build_manifest(run_dir, cfg, counts)
    except NothingKept:
        manifest_dict = None  # an outcome, not a crash: the report says where everything went
    with stage_errors("report", run_dir):
        summary = report_task(str(run_dir), cfg, manifest_dict)
    manifest = None
    if manifest_dict is None:
        logger.warning("nothing kept: %s", nothing_kept_reasons(summary))
    else:
        with stage_errors("manifest", run_dir):
            manifest = manifest_task(str(run_dir), manifest_dict)
    return {"run_dir": str(run_dir), "records_read": records_read, "counts": counts, "manifest": manifest,
            "nothing_kept": manifest_dict is None, "report": str(run_dir / "report" / "report.html"),
            "stats": stats, "summary": summary}


def nothing_kept_reasons(summary: dict[str, Any]) -> str:
    """Which sources lost everything, and to which reasons (from the report's funnel and reasons)."""
    lost = [r["source"] for r in summary.get("funnel", []) if r.get("read") and not r.get("kept")]
    top = ", ".join(f"{r['reason']} {r['count']}" for r in (summary.get("reasons") or [])[:5])
    return (f"every source lost all its records ({', '.join(lost) or 'no records were read'})"
            + (f"; the main reasons: {top}" if top else "") + "; see the report")


def _load(config: str, overrides: list[str] | None) -> RunConfig:
    return load_config(config, list(overrides or []))


@flow(name="curate", log_prints=True)
def curate(config: str = "configs/demo.toml", overrides: list[str] | None = None) -> dict[str, Any]:
    """Curate the sources of a config into a run directory (no training)."""
    cfg = _load(config, overrides)
    with run_directory(cfg, "curate"):
        result = curate_run(cfg)
    result.pop("summary", None)
    return result


@flow(name="curate-and-train", log_prints=True)
def curate_and_train(config: str = "configs/demo.toml", overrides: list[str] | None = None) -> dict[str, Any]:
    """Curate, check the gate, train, compare before/after, and rebuild the report with the loss curves."""
    overrides = list(overrides or [])
    cfg = _load(config, overrides)
    with run_directory(cfg, "curate-and-train"):
        return _curate_and_train(cfg, config, overrides)


def _curate_and_train(cfg: RunConfig, config: str, overrides: list[str]) -> dict[str, Any]:
    from flows.gate import run_gate

    logger = get_run_logger()
    result = curate_run(cfg)
    summary = result.pop("summary")
    run_dir = Path(result["run_dir"])

    if result["nothing_kept"]:
        result["trained"] = False
        return result
    decision = run_gate(summary, cfg.gate)
    result["gate"] = decision.as_dict()
    if not decision.approved:
        logger.warning("not training: %s", decision.reason)
        result["trained"] = False
        return result
    if not getattr(cfg.train, "enabled", True):
        logger.info("train.enabled = false: curated data only")
        result["trained"] = False
        return result

    manifest_hash = hash_files([run_dir / "manifest.json"])
    key = stage_key("train", run_dir, manifest_hash, cfg.section_hash(*TRAIN.sections), code_version(*TRAIN.code))
    result["train"] = _run_stage(
        train_task, "train", run_dir, key, cfg=cfg, config_path=str(config), overrides=overrides
    )
    result["trained"] = True
    result["model"] = str(run_dir / "model")
    result["before_after"] = compare_task(str(run_dir), cfg) is not None
    report_task(str(run_dir), cfg)
    return result
