"""With a pre-trained model the trainer uses fine-tuning defaults for what the config leaves unset;
the from-scratch demo keeps its own."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_fixtures import make_base_model, make_run_dir

from schemas.config import load_config
from schemas.config_train import FINETUNE_DEFAULTS
from trainer.defaults import finetune_defaults, warmup_of
from trainer.fit import lr_at, train

HEAD = 'name = "x"\noutput_dir = "out"\n[[sources]]\nname = "a"\npath = "a.jsonl"\ntier = "expert"\n'


def _cfg(tmp_path: Path, body: str, *overrides: str):
    path = tmp_path / "c.toml"
    path.write_text(HEAD + body)
    return load_config(path, list(overrides))


def test_from_scratch_keeps_the_demo_defaults(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "[train]\nepochs = 6\n")
    assert finetune_defaults(cfg) == (cfg, {})
    assert (cfg.train.lr, cfg.train.warmup_steps, cfg.train.warmup_ratio) == (2e-3, 5, None)


@pytest.mark.parametrize(("lora", "lr"), [("false", 2e-5), ("true", 2e-4)])
def test_a_pretrained_model_gets_finetuning_defaults_for_what_is_unset(
    tmp_path: Path, lora: str, lr: float
) -> None:
    cfg = _cfg(tmp_path, f'[model]\npath = "m"\n[lora]\nenabled = {lora}\n')
    new, applied = finetune_defaults(cfg)
    assert applied == {"lr": lr, "warmup_ratio": 0.03, "epochs": FINETUNE_DEFAULTS["epochs"]}
    assert (new.train.lr, new.train.warmup_ratio, new.train.epochs) == (lr, 0.03, 2.0)
    assert finetune_defaults(new)[1] == {}  # applying twice changes nothing
    assert cfg.train.lr == 2e-3  # the given config is not changed


def test_what_the_user_sets_wins_even_at_the_demo_value(tmp_path: Path) -> None:
    # lr = 2e-3 is also the [train] default: set explicitly, it is kept (model_fields_set, not value)
    cfg = _cfg(tmp_path, '[model]\npath = "m"\n[train]\nlr = 2e-3\nwarmup_steps = 5\n', "train.max_steps=7")
    new, applied = finetune_defaults(cfg)
    assert applied == {} and new.train.lr == 2e-3 and new.train.warmup_ratio is None
    new, applied = finetune_defaults(_cfg(tmp_path, '[model]\npath = "m"\n[train]\nepochs = 1\n'))
    assert set(applied) == {"lr", "warmup_ratio"} and new.train.epochs == 1


def test_warmup_ratio_sets_the_warmup_steps(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "[train]\nwarmup_ratio = 0.1\nwarmup_steps = 50\nlr = 1.0\n")
    assert warmup_of(cfg.train, 100) == 10 and warmup_of(cfg.train, 101) == 11
    assert [lr_at(s, 100, cfg.train) for s in range(3)] == [0.1, 0.2, 0.3]
    assert warmup_of(_cfg(tmp_path, "[train]\nwarmup_steps = 7\n").train, 100) == 7


def test_the_trainer_logs_the_defaults_it_applied(tmp_path: Path) -> None:
    rd = make_run_dir(tmp_path / "run", n_train=8, n_val=2)
    base = make_base_model(tmp_path / "base", rd)
    cfg = load_config(_write(tmp_path, rd, base), [])
    lines: list[str] = []
    train(rd, cfg, log=lines.append)
    assert any("fine-tuning defaults" in x and "lr=2e-05" in x and "warmup_ratio=0.03" in x for x in lines), (
        lines
    )
    assert any("lr 2e-05" in x for x in lines if x.startswith("training "))


def _write(tmp_path: Path, rd: Path, base: Path) -> Path:
    path = tmp_path / "ft.toml"
    path.write_text(
        f'name = "ft"\noutput_dir = "{rd}"\n[[sources]]\nname = "a"\npath = "a.jsonl"\ntier = "expert"\n'
        f'[model]\npath = "{base}"\n'
        '[train]\nmax_steps = 2\ndevice = "cpu"\nsave_every = 0\nsave_initial_model = false\nnum_threads = 1\n'
    )
    return path
