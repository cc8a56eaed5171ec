"""Reference-model scores (pipeline.score): the losses are the ones transformers computes directly,
packing and batching change nothing, IFD tells a copied answer from an unrelated one, and the cache
is keyed by (model, conversation_id)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from score_fixtures import WORDS, copy_conversations, make_reference, quality_run, train_copy_model

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pipeline.score.reference import reference_pairs, reuses_encode  # noqa: E402
from pipeline.score.stage import run_score  # noqa: E402


def _convs(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        msgs = [{"role": "system", "content": "be brief"}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 2)):
            msgs.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(2, 9)))})
            msgs.append({"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(1, 12)))})
        out.append(msgs)
    return out


def _direct(model: object, ids: np.ndarray, mask: np.ndarray) -> float:
    """Mean cross-entropy of the targets of one sequence, from transformers' own forward."""
    x = torch.tensor(ids, dtype=torch.long)[None]
    with torch.no_grad():
        logits = model(input_ids=x).logits[0].float()
    t = np.flatnonzero(mask[1:]) + 1
    return float(torch.nn.functional.cross_entropy(logits[t - 1], x[0, t]))


def _scores(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "work" / "score" / "part-00000.parquet")


@pytest.mark.parametrize("arch", ["llama", "granite"])  # head-only loss, and full logits (scaled Granite)
def test_scores_equal_a_direct_transformers_computation(tmp_path: Path, arch: str) -> None:
    from transformers import AutoModelForCausalLM

    ref = make_reference(tmp_path / "ref", arch=arch)
    convs = _convs(12)
    run_dir, cfg, parts = quality_run(tmp_path / "run", convs,
                                      select={"reference_model": str(ref), "score_batch_tokens": 4096})  # fmt: skip
    res = run_score(parts, run_dir, cfg)
    assert res.records_out == 12 and res.unscored == 0
    got = _scores(run_dir)
    model = AutoModelForCausalLM.from_pretrained(ref, attn_implementation="eager").eval()
    pairs = reference_pairs(convs, ref, cfg)
    ids_of = dict(zip(pl.read_parquet(parts[0])["conversation_id"], range(len(convs)), strict=True))
    for row in got.iter_rows(named=True):
        i = ids_of[row["conversation_id"]]
        prompted = _direct(model, pairs.ids[i], pairs.masks[i])
        alone = _direct(model, *pairs.alone(i))
        assert row["ref_loss"] == pytest.approx(prompted, rel=1e-4, abs=1e-5)
        assert row["ref_loss_alone"] == pytest.approx(alone, rel=1e-4, abs=1e-5)
        assert row["ifd"] == pytest.approx(prompted / alone, rel=1e-4)
        assert row["ref_ppl"] == pytest.approx(np.exp(prompted), rel=1e-4)
        assert row["ref_targets"] == int(pairs.masks[i][1:].sum())
    # the alone sequence is exactly the targets, after one start token
    a_ids, a_mask = pairs.alone(0)
    assert a_ids[1:].tolist() == pairs.ids[0][pairs.masks[0].astype(bool)].tolist() and not a_mask[0]

    # packing several conversations per forward, or one per forward, gives the same scores
    small = cfg.model_copy(update={"select": cfg.select.model_copy(update={"score_batch_tokens": 64})})
    (run_dir / "work" / "score" / "cache").rename(tmp_path / "old-cache")
    run_score(parts, run_dir, small)
    again = _scores(run_dir)
    for col in ("ref_loss", "ref_loss_alone", "ifd"):
        assert np.allclose(again[col].to_numpy(), got[col].to_numpy(), rtol=1e-5, atol=1e-6)


def test_ifd_of_a_copied_answer_is_low_of_an_unrelated_one_high(tmp_path: Path) -> None:
    ref = make_reference(tmp_path / "ref")
    copies = copy_conversations(16, seed=1)
    rng = random.Random(7)
    unrelated = [[m[0], {"role": "assistant", "content": " ".join(rng.choice(WORDS) for _ in range(6))}]
                 for m in copy_conversations(16, seed=2)]  # fmt: skip
    run_dir, cfg, parts = quality_run(tmp_path / "run", copies + unrelated, select={"reference_model": str(ref)})
    train_copy_model(ref, cfg)
    run_score(parts, run_dir, cfg)
    got = pl.read_parquet(parts[0]).select("conversation_id").with_row_index().join(_scores(run_dir),
                                                                                  on="conversation_id")
    ifd = got.sort("index")["ifd"].to_numpy()
    copied, other = ifd[:16], ifd[16:]
    # a tiny model trained for seconds: the medians and most pairs are clear, not every single one
    assert np.median(copied) < 0.6 < 1.0 < np.median(other), (copied, other)
    assert (copied[:, None] < other[None, :]).mean() > 0.9, (copied, other)


def test_scores_are_cached_by_model_and_conversation(tmp_path: Path) -> None:
    ref = make_reference(tmp_path / "ref")
    convs = _convs(10, seed=3)
    run_dir, cfg, parts = quality_run(tmp_path / "run", convs[:8], select={"reference_model": str(ref)})
    first = run_score(parts, run_dir, cfg)
    assert (first.scored, first.cached) == (8, 0)
    again = run_score(parts, run_dir, cfg)
    assert (again.scored, again.cached) == (0, 8) and again.model_hash == first.model_hash
    assert _scores(run_dir).sort("conversation_id").equals(_scores(run_dir).sort("conversation_id"))
    # two more conversations: only they are scored
    run_dir2, cfg2, parts2 = quality_run(tmp_path / "run", convs, select={"reference_model": str(ref)})
    more = run_score(parts2, run_dir2, cfg2)
    assert (more.scored, more.cached) == (2, 8)
    # another model (other weights): a new key, everything scored again
    make_reference(ref, seed=1)
    other = run_score(parts2, run_dir2, cfg2)
    assert other.model_hash != first.model_hash and other.scored == 10


def test_no_reference_model_scores_nothing(tmp_path: Path) -> None:
    run_dir, cfg, parts = quality_run(tmp_path / "run", _convs(3))
    res = run_score(parts, run_dir, cfg)
    assert res.parts == [] and res.reference_model is None


def test_the_model_being_trained_reuses_the_encode_stages_ids(tmp_path: Path) -> None:
    from pipeline.render.encode import run_encode

    ref = make_reference(tmp_path / "ref")
    convs = _convs(10, seed=4)
    run_dir, cfg, parts = quality_run(tmp_path / "run", convs, model={"path": str(ref)},
                                      select={"reference_model": str(ref)}, pack={"max_seq_len": 256})  # fmt: skip
    assert reuses_encode(cfg)
    enc = run_encode(parts, run_dir, cfg)
    res = run_score(parts, run_dir, cfg, encoded=[Path(p) for p in enc.parts])
    assert "encode" in res.rendered_with
    reused = _scores(run_dir).sort("conversation_id")
    # the same numbers as rendering with the reference model's own tokenizer and template
    run_dir2, cfg2, parts2 = quality_run(tmp_path / "run2", convs, select={"reference_model": str(ref)})
    assert not reuses_encode(cfg2)
    run_score(parts2, run_dir2, cfg2)
    own = _scores(run_dir2).sort("conversation_id")
    assert np.allclose(reused["ifd"].to_numpy(), own["ifd"].to_numpy(), rtol=1e-5)
