"""`sftforge config explain`: every key of the run config, and the README's reference in sync."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from flows.cli import main
from schemas.config import RunConfig
from schemas.explain import README_BEGIN, README_END, explain, readme_block


def _all_paths(model, prefix=""):  # noqa: ANN001, ANN202 - an independent walk of the models
    import typing

    from pydantic import BaseModel

    for name, f in model.model_fields.items():
        yield prefix + name
        tp = f.annotation
        subs = [a for a in (tp, *typing.get_args(tp)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if subs:
            sep = "[]." if typing.get_origin(tp) is list else ".<name>." if typing.get_origin(tp) is dict else "."
            yield from _all_paths(subs[0], prefix + name + sep)


def test_every_key_is_explained_with_type_and_default() -> None:
    got = {k.path: k for k in explain()}
    assert set(got) == set(_all_paths(RunConfig))
    assert got["pack.max_seq_len"].default == "2048" and ">= 16" in got["pack.max_seq_len"].bounds
    assert got["sources[].tier"].type == "'expert' | 'crowdsourced' | 'synthetic'"
    assert all(k.description for k in got.values() if "." in k.path), [p for p, k in got.items() if not k.description]


def test_one_section_and_an_unknown_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "explain", "pack"]) == 0
    out = capsys.readouterr().out
    assert "pack.max_seq_len" in out and "dedup." not in out
    assert main(["config", "explain", "nope"]) == 2
    assert "the sections are:" in capsys.readouterr().err


def test_the_readme_reference_is_generated_from_the_models() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text[text.index(README_BEGIN): text.index(README_END) + len(README_END)]
    assert block == readme_block(), "README out of date: run `sftforge config explain --readme README.md`"


def test_help_points_to_config_explain(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "sftforge config explain" in capsys.readouterr().out
    assert Path(REPO / "README.md").exists()
