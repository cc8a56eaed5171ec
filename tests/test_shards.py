"""The render stages end to end (encode, then pack): shard columns, segments, repeat, split, drops in
the ledger, typed results, byte-identical re-runs, the tokenizer cache, exact counts, the manifest."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from tokenize_fixtures import make_run, record, sample_conversations

from pipeline.core.ledger import read_ledger
from pipeline.core.manifest import (
    SCHEMA_VERSION,
    ManifestError,
    build_manifest,
    read_manifest,
    write_manifest,
)
from pipeline.render.masks import MaskOptions, encode_conversations
from pipeline.render.pack import SHARD_SCHEMA, run_tokenize
from pipeline.render.templates import BUILTIN_TEMPLATES
from pipeline.render.tokenizer import load_tokenizer


def _records(n: int = 120, seed: int = 0) -> list[dict]:
    return [record(i, c, source=f"s{i % 3}", tier=["expert", "synthetic"][i % 2])
            for i, c in enumerate(sample_conversations(n, seed))]


def _rows(run_dir, split: str) -> pl.DataFrame:
    parts = sorted((run_dir / "shards").glob(f"{split}-*.parquet"))
    return pl.concat([pl.read_parquet(p) for p in parts]) if parts else pl.DataFrame()


def _digests(run_dir) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((run_dir / "shards").glob("*"))}


def test_shards_hold_every_conversation_with_its_own_ids_and_mask(tmp_path) -> None:
    recs = _records()
    repeat = [1 + (i % 3 == 0) * 2 for i in range(len(recs))]  # every third conversation 3 times
    run_dir, cfg = make_run(tmp_path, recs, repeat=repeat, tokenizer={"vocab_size": 500},
                            pack={"max_seq_len": 256, "val_fraction": 0.2, "rows_per_shard": 7, "self_check_all": True})
    enc_result, stats = run_tokenize(run_dir, cfg)
    for p in (run_dir / "shards").glob("*.parquet"):
        assert pq.read_schema(p).remove_metadata() == SHARD_SCHEMA
    assert not list((run_dir / "shards").glob(".*"))  # no temporary file left behind
    train, val = _rows(run_dir, "train"), _rows(run_dir, "val")
    assert len(list((run_dir / "shards").glob("train-*.parquet"))) == -(-train.height // 7)

    # standalone encoding of each conversation, to compare the packed segments with
    tok = load_tokenizer(run_dir / "tokenizer")
    template = BUILTIN_TEMPLATES["chatml"]
    enc = encode_conversations([r["messages"] for r in recs], template, tok, MaskOptions())
    by_id = {r["conversation_id"]: (enc.ids[i].tolist(), enc.masks[i].tolist()) for i, r in enumerate(recs)}

    seen: Counter[str] = Counter()
    val_ids: set[str] = set()
    for split, rows in (("train", train), ("val", val)):
        for row in rows.iter_rows(named=True):
            assert len(row["input_ids"]) == len(row["loss_mask"]) == sum(row["seq_lens"]) <= 256
            pos = 0
            for cid, n in zip(row["conversation_ids"], row["seq_lens"], strict=True):
                assert (row["input_ids"][pos : pos + n], row["loss_mask"][pos : pos + n]) == by_id[cid]
                assert row["loss_mask"][pos] == 0  # the first token of every segment
                pos += n
                seen[cid] += 1
                if split == "val":
                    val_ids.add(cid)
    want = {r["conversation_id"]: (1 if r["conversation_id"] in val_ids else rep) for r, rep in zip(recs, repeat, strict=True)}
    assert dict(seen) == want  # each once, train copies = repeat, validation never repeated
    assert 0 < len(val_ids) < len(recs)
    assert stats.conversations["train_segments"] == sum(want.values()) - len(val_ids)
    assert stats.packing["train"]["real_tokens"] == sum(len(x) for x in train["input_ids"])
    assert enc_result.self_check["checked"] == len(recs)
    by_source = stats.train_by_source
    assert sum(v["segments"] for v in by_source.values()) == stats.conversations["train_segments"]
    assert sum(v["supervised"] for v in stats.train_by_tier.values()) == stats.tokens["train_supervised"]
    assert (run_dir / "work" / "encode" / "stats.json").exists() and (run_dir / "work" / "pack" / "stats.json").exists()
    assert stats.seconds > 0 and enc_result.records_in == len(recs) == enc_result.records_out


def test_same_input_and_config_give_byte_identical_shards(tmp_path) -> None:
    recs = _records(80, seed=4)
    sections = {"tokenizer": {"vocab_size": 400}, "pack": {"max_seq_len": 200, "rows_per_shard": 5}}
    a, cfg_a = make_run(tmp_path / "a", recs, **sections)
    b, cfg_b = make_run(tmp_path / "b", list(reversed(recs)), **sections)  # part order must not matter
    sa, _ = run_tokenize(a, cfg_a)
    run_tokenize(b, cfg_b)
    assert _digests(a) == _digests(b) and len(_digests(a)) > 2
    assert (a / "tokenizer" / "tokenizer.json").read_bytes() == (b / "tokenizer" / "tokenizer.json").read_bytes()
    assert sa.tokenizer["cache_hit"] is False
    again, _ = run_tokenize(a, cfg_a)  # re-run: the tokenizer comes from the cache, shards are the same
    assert again.tokenizer["cache_hit"] is True and _digests(a) == _digests(b)


def test_unpacked_mode_writes_one_conversation_per_row(tmp_path) -> None:
    run_dir, cfg = make_run(tmp_path, _records(30), tokenizer={"vocab_size": 300},
                            pack={"packing": False, "val_fraction": 0.0, "max_seq_len": 1024})
    _, stats = run_tokenize(run_dir, cfg)
    train = _rows(run_dir, "train")
    assert train.height == 30 and train["seq_lens"].list.len().to_list() == [1] * 30
    assert stats.conversations["val"] == 0 and not list((run_dir / "shards").glob("val-*"))


def test_drops_go_to_the_ledger_with_reason_and_sentence(tmp_path) -> None:
    long_conv = [{"role": "user", "content": "word " * 2000}, {"role": "assistant", "content": "short"}]
    two = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b " * 20},
           {"role": "user", "content": "c " * 1500}, {"role": "assistant", "content": "d"}]
    recs = [*_records(20), record(100, long_conv), record(101, two)]
    run_dir, cfg = make_run(tmp_path, recs, tokenizer={"vocab_size": 300}, template={"train_on": "last_assistant"},
                            pack={"max_seq_len": 1024, "overflow": "truncate", "self_check_all": True})
    stats, _ = run_tokenize(run_dir, cfg)
    ledger = read_ledger(run_dir).sort("origin")
    assert ledger["origin"].to_list() == ["src:100", "src:101"]
    assert ledger["reason"].to_list() == ["tokenize.too_long", "tokenize.no_supervised_tokens"]
    assert set(ledger["stage"]) == {"tokenize"} and set(ledger["outcome"]) == {"dropped"}
    assert "not even its first assistant turn fits" in ledger["detail"][0]
    assert stats.dropped == {"tokenize.no_supervised_tokens": 1, "tokenize.too_long": 1}
    assert stats.dropped_tokens["supervised_tokens"] > 0 and stats.records_out == 20
    written = {c for ids in _rows(run_dir, "train")["conversation_ids"] for c in ids}
    written |= {c for ids in _rows(run_dir, "val")["conversation_ids"] for c in ids}
    assert recs[-1]["conversation_id"] not in written and recs[-2]["conversation_id"] not in written
    assert len(written) == 20


def test_truncation_losses_are_counted(tmp_path) -> None:
    two = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b " * 20},
           {"role": "user", "content": "c " * 1500}, {"role": "assistant", "content": "d"}]
    run_dir, cfg = make_run(tmp_path, [record(0, two), *_records(5)], tokenizer={"vocab_size": 300},
                            pack={"max_seq_len": 1024, "overflow": "truncate", "self_check_all": True})
    stats, _ = run_tokenize(run_dir, cfg)
    assert stats.truncation["conversations"] == 1
    assert stats.truncation["supervised_tokens_lost"] >= 2  # "d" and its end-of-turn token
    assert stats.truncation["tokens_lost"] > 200


def test_encoded_counts_are_the_written_tokens_and_pack_renders_nothing(tmp_path, monkeypatch) -> None:
    """Encode once: the counts the mix selects on are the shards' segment lengths, truncation
    included, and the pack stage writes the stored encodings without rendering or tokenizing."""
    two = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b " * 20},
           {"role": "user", "content": "c " * 1500}, {"role": "assistant", "content": "d"}]
    recs = [record(0, two), *_records(40, seed=7)]
    run_dir, cfg = make_run(tmp_path, recs, tokenizer={"vocab_size": 400},
                            pack={"packing": False, "val_fraction": 0.0, "max_seq_len": 1024, "overflow": "truncate"})
    from pipeline.render import masks, templates
    from pipeline.render.encode import read_encoded, run_encode
    from pipeline.render.pack import run_pack

    run_encode(sorted((run_dir / "curated").glob("*.parquet")), run_dir, cfg)
    counts = dict(read_encoded(run_dir, ["conversation_id", "tokens"]).iter_rows())
    assert counts[recs[0]["conversation_id"]] <= 1024  # truncated: counted as written

    def no(*a, **k):  # noqa: ANN002, ANN003
        raise AssertionError("the pack stage rendered or tokenized again")

    monkeypatch.setattr(masks, "encode_conversations", no)
    monkeypatch.setattr(templates.ChatTemplate, "render", no)
    run_pack(run_dir, cfg)
    for row in _rows(run_dir, "train").iter_rows(named=True):
        assert row["seq_lens"][0] == counts[row["conversation_ids"][0]]


def test_manifest_lists_every_shard_and_is_required(tmp_path) -> None:
    run_dir, cfg = make_run(tmp_path, _records(40), tokenizer={"vocab_size": 300}, pack={"rows_per_shard": 3})
    with pytest.raises(ManifestError, match="manifest.json not found"):
        read_manifest(run_dir)
    run_tokenize(run_dir, cfg)
    path = write_manifest(run_dir, build_manifest(run_dir, cfg, {"kept": 40}))
    m = read_manifest(run_dir)
    assert path == run_dir / "manifest.json" and m["schema_version"] == SCHEMA_VERSION
    assert m["config_hash"] == cfg.data_hash() and m["counts"] == {"kept": 40} and m["template"] == "chatml"
    files = sorted((run_dir / "shards").glob("*.parquet"))
    assert [s["path"] for s in m["shards"]] == [f"shards/{p.name}" for p in files]
    for s in m["shards"]:
        p = run_dir / s["path"]
        assert s["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
        assert s["rows"] == pl.read_parquet(p).height
    assert m["tokenizer_hash"] == hashlib.sha256((run_dir / "tokenizer" / "tokenizer.json").read_bytes()).hexdigest()


def test_no_curated_data_is_a_clear_error(tmp_path) -> None:
    from pipeline.render.pack import NoCuratedData

    _, cfg = make_run(tmp_path, _records(2))
    with pytest.raises(NoCuratedData, match="no curated"):
        run_tokenize(tmp_path / "elsewhere", cfg)


def test_val_split_is_stable_and_near_the_fraction() -> None:
    from pipeline.render.pack import val_mask

    ids = [f"{i:032x}" for i in range(20_000)]
    v = val_mask(ids, 0.05, seed=0)
    assert abs(v.mean() - 0.05) < 0.01
    assert np.array_equal(v, val_mask(ids, 0.05, seed=0)) and not np.array_equal(v, val_mask(ids, 0.05, seed=1))
    # a conversation's side does not depend on the others (the split survives adding data)
    assert v[:500].any() and np.array_equal(v[:500], val_mask(ids[:500], 0.05, seed=0))


def test_the_bpe_learns_from_a_bounded_even_sample() -> None:
    from pipeline.render.encode import training_sample

    texts = [f"{i:02d}" + "x" * 8 for i in range(100)]  # 1,000 characters
    assert training_sample(texts, 10_000) is texts
    sample = training_sample(texts, 200)
    assert sum(map(len, sample)) <= 200 and len(sample) == 20 and sample[:2] == [texts[0], texts[5]]


@pytest.mark.parametrize("train_max_chars", [None, 3_000])
def test_encoding_in_worker_chunks_gives_the_same_shards_ledger_and_counts(tmp_path, monkeypatch,
                                                                          train_max_chars) -> None:
    """tokenizer.workers: chunks encoded in spawned processes write the same shards, the same drops
    and the same counts as one process, whatever the chunking; the tokenizer trained on a sample
    of the texts the chunks rendered is the one trained on the same sample in one process."""
    from pipeline.render import encode

    too_long = [{"role": "user", "content": "w " * 400}, {"role": "assistant", "content": "x"}]
    recs = [*_records(90, seed=11), record(900, too_long)]
    sections = {"tokenizer": {"vocab_size": 400}, "pack": {"max_seq_len": 160, "rows_per_shard": 6, "self_check_all": True}}
    one, cfg_one = make_run(tmp_path / "one", recs, **sections)
    two, cfg_two = make_run(tmp_path / "two", recs, **sections)
    cfg_two.tokenizer.workers = 3
    if train_max_chars:  # below the config's floor: a sample of these few texts
        cfg_one.tokenizer.train_max_chars = cfg_two.tokenizer.train_max_chars = train_max_chars
    r1, _ = run_tokenize(one, cfg_one)
    monkeypatch.setattr(encode, "_PARALLEL_MIN_ROWS", 10)
    r2, _ = run_tokenize(two, cfg_two)
    assert len(r2.parts) == 3 and len(r1.parts) == 1
    assert _digests(one) == _digests(two) and len(_digests(one)) > 2
    keep = ("records_in", "records_out", "dropped", "truncation", "dropped_tokens", "length_histogram",
            "supervised_histogram", "self_check", "reasoning", "tool_conversations")
    assert {k: getattr(r1, k) for k in keep} == {k: getattr(r2, k) for k in keep}
    assert r1.tokenizer == r2.tokenizer
    n, of = map(int, r2.tokenizer["trained_on"].split(" conversations")[0].split(" of "))
    assert of == 91 and (n < of if train_max_chars else n == of)
    assert r1.dropped["tokenize.too_long"] >= 1 and r2.self_check["checked"] == r2.records_out
    assert read_ledger(one).drop("run_id", strict=False).sort("origin").equals(
        read_ledger(two).drop("run_id", strict=False).sort("origin"))
