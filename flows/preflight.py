"""Everything that can be checked before any Prefect server or stage starts: the sources (each
file's type and format), the benchmark, tokenizer, template and model paths, and the output folder.
Each problem is reported once, all together, naming the file and what was expected (exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def preflight(cfg: Any) -> list[str]:
    """Every problem with `cfg` that would stop a run, found without running a stage."""
    from pipeline.core.rundir import RunDirError, check_run_dir
    from pipeline.ingest.inspect import preflight_source

    problems: list[str] = []
    for s in cfg.sources:
        problems += preflight_source(s)
    quality = cfg.quality
    if quality.enabled and quality.contamination.enabled:
        for b in quality.contamination.benchmarks:
            if not Path(b.path).is_file():
                problems.append(f"quality.contamination.benchmarks {b.name!r}: {b.path} is not a file")
    if cfg.model.path is not None and not (Path(cfg.model.path) / "config.json").is_file():
        problems.append(f"model.path: {cfg.model.path} is not a Hugging Face model directory (no config.json)")
    elif cfg.model.path is not None:
        problems += _positions_problems(cfg)
    if cfg.tokenizer.path is not None and not Path(cfg.tokenizer.path).exists():
        problems.append(f"tokenizer.path: {cfg.tokenizer.path} does not exist")
    elif not any("model.path" in p for p in problems):
        problems += _template_problems(cfg)
    try:
        check_run_dir(Path(cfg.output_dir))
    except RunDirError as e:
        problems.append(str(e))
    return problems


def _template_problems(cfg: Any) -> list[str]:
    from pipeline.render.templates import TemplateError, load_template

    try:
        load_template(cfg.template.name, cfg.tokenizer.path)
    except (TemplateError, ValueError, OSError) as e:
        if cfg.model.path is not None and str(cfg.template.name) == str(cfg.model.path):
            return [f"model.path: {cfg.model.path} is used for the chat template (template.name is not set), "
                    f"but: {e}; set template.name (chatml, llama2, llama3, alpaca or a .jinja file)"]
        return [str(e) if str(e).startswith("template.name") else f"template.name = {str(cfg.template.name)!r}: {e}"]
    return []


def _positions_problems(cfg: Any) -> list[str]:
    """A pre-trained model cannot take rows longer than its position table: found before curating."""
    import json

    try:
        limit = json.loads((Path(cfg.model.path) / "config.json").read_text(encoding="utf-8")).get(
            "max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return []  # the model loader reports an unreadable config.json with its own message
    if isinstance(limit, int) and cfg.pack.max_seq_len > limit:
        return [f"pack.max_seq_len = {cfg.pack.max_seq_len} is longer than model.path's max_position_embeddings "
                f"({limit}, {cfg.model.path}/config.json): set pack.max_seq_len <= {limit}"]
    return []
