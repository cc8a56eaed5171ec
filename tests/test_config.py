"""The run configuration loader: the demo config is valid; bad keys are named together with the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.config import ConfigError, load_config, parse_override

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


SOURCE = '[[sources]]\nname = "a"\npath = "data/raw/synthetic/alpaca.jsonl"\ntier = "synthetic"\n'


def test_demo_config_is_valid_and_its_sources_exist():
    cfg = load_config(REPO / "configs" / "demo.toml")
    assert cfg.name == "demo" and str(cfg.output_dir) == "data/processed/demo"
    assert {s.tier.value for s in cfg.sources} == {"expert", "crowdsourced", "synthetic"}
    for s in cfg.sources:
        assert (REPO / s.path).exists(), s.path


def test_unknown_key_in_a_source_is_named_with_the_file(tmp_path):
    path = write(tmp_path, f'name = "x"\noutput_dir = "out"\n{SOURCE}colour = "red"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "sources.0.colour: unknown key" in str(e.value)


def test_every_error_is_reported_together(tmp_path):
    path = write(tmp_path, 'name = "x"\noutput_dir = "out"\n[[sources]]\nname = "a"\npath = "p"\n'
                           'tier = "gold"\nformat = "csv"\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "sources.0.tier" in msg and "sources.0.format" in msg and "2 error(s)" in msg


def test_missing_sources_and_duplicate_names(tmp_path):
    with pytest.raises(ConfigError, match="sources: required key is missing"):
        load_config(write(tmp_path, 'name = "x"\noutput_dir = "out"\n'))
    with pytest.raises(ConfigError, match="used twice"):
        load_config(write(tmp_path, f'name = "x"\noutput_dir = "out"\n{SOURCE}{SOURCE}'))


def test_not_toml_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "name = \n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_overrides_apply_dotted_keys(tmp_path):
    path = write(tmp_path, f'name = "x"\noutput_dir = "out"\n{SOURCE}')
    cfg = load_config(path, ["output_dir=elsewhere", "seed=3"])
    assert str(cfg.output_dir) == "elsewhere" and cfg.seed == 3
    assert parse_override("sources=[]") == ("sources", [])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("seed")


def test_source_defaults():
    cfg = load_config(REPO / "configs" / "demo.toml")
    alpaca = next(s for s in cfg.sources if s.name == "alpaca")
    assert alpaca.format is None and alpaca.oasst_paths == "best" and "<|endoftext|>" in alpaca.strip_suffixes
