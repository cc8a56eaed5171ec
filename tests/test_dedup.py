"""Deduplication: exact and near clusters, survivors, prior-run index, ledger, determinism."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.core.ledger import read_ledger
from pipeline.dedup.stage import deduplicate, run_dedup
from pipeline.ingest.canonical import from_records
from schemas.config_curation import DedupConfig
from schemas.conversation import conversation_id

VOCAB = [f"word{i}" for i in range(3000)]


def text(seed: int, n: int = 120) -> str:
    rnd = random.Random(seed)
    return " ".join(rnd.choices(VOCAB, k=n))


def conv(origin: str, tier: str, user: str, assistant: str, system: str | None = None,
         more: list[tuple[str, str]] | None = None) -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    for u, a in more or []:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    return {"conversation_id": conversation_id(msgs), "origin": origin, "source": origin.split(":")[0],
            "tier": tier, "messages": msgs}


def perturb(t: str, k: int, seed: int) -> str:
    words = t.split()
    rnd = random.Random(seed)
    for _ in range(k):
        words[rnd.randrange(len(words))] = "changed"
    return " ".join(words)


def kept_origins(df: pl.DataFrame, cfg: DedupConfig | None = None) -> set[str]:
    return set(deduplicate(df, cfg or DedupConfig(workers=1)).kept["origin"])


def test_exact_cluster_keeps_one_and_names_it() -> None:
    a = text(1)
    df = from_records([
        conv("s:1", "synthetic", "Say it", a),
        conv("s:2", "synthetic", "  SAY   it ", a.upper(), system="You are helpful."),
        conv("s:3", "synthetic", "Ｓay it", a.replace(" ", "\n")),  # NFKC fullwidth S, newlines
        conv("s:4", "synthetic", "Other", text(2)),
    ])
    res = deduplicate(df, DedupConfig(workers=1))
    assert res.kept.height == 2
    assert set(res.dropped["reason"]) == {"dedup.exact"}
    survivor = res.kept.filter(pl.col("origin") != "s:4")["conversation_id"].item()
    assert set(res.dropped["dup_of"]) == {survivor}
    assert all("exact copy" in d for d in res.dropped["detail"])


def test_tier_priority_then_length_then_origin() -> None:
    a = text(3)
    df = from_records([
        conv("syn:1", "synthetic", "q", a + " extra words make this longer"),
        conv("crowd:1", "crowdsourced", "q", a + " extra words make this longer"),
        conv("exp:9", "expert", "q", a + " extra words make this longer"),
    ])
    assert kept_origins(df) == {"exp:9"}
    b = text(4)
    same_tier = from_records([
        conv("x:2", "crowdsourced", "q", b),
        conv("x:1", "crowdsourced", "q", perturb(b, 2, 0)),
        conv("x:3", "crowdsourced", "q", b + " and more"),
    ])
    assert kept_origins(same_tier) == {"x:3"}  # the longer assistant text wins
    w = b.split()
    w[5] = "z" * len(w[5])  # same length, one word different
    tie = from_records([conv("y:2", "synthetic", "q", b), conv("y:1", "synthetic", "q", " ".join(w))])
    assert kept_origins(tie) == {"y:1"}  # equal tier and length: the smaller origin


def test_survivor_is_stable_under_input_order() -> None:
    rows = [conv(f"s:{i}", random.Random(i).choice(["synthetic", "crowdsourced"]), "q", perturb(text(7), i % 3, i))
            for i in range(12)]
    first = kept_origins(from_records(rows))
    for seed in range(3):
        random.Random(seed).shuffle(rows)
        assert kept_origins(from_records(rows)) == first
    assert len(first) == 1


def test_near_duplicates_cluster_unrelated_kept() -> None:
    base = text(10, 200)
    rows = [conv("n:0", "synthetic", "Explain", base)]
    rows += [conv(f"n:{i}", "synthetic", "Explain", perturb(base, 2, i)) for i in range(1, 5)]
    rows += [conv(f"u:{i}", "synthetic", "Explain", text(100 + i, 200)) for i in range(5)]
    res = deduplicate(from_records(rows), DedupConfig(workers=1))
    assert set(res.kept["origin"]) == {"n:0", "n:1", "n:2", "n:3", "n:4"} - {
        o for o in res.dropped["origin"]} | {f"u:{i}" for i in range(5)}
    assert res.dropped.height == 4 and set(res.dropped["reason"]) == {"dedup.near"}
    assert res.dropped["dup_of"].n_unique() == 1
    assert res.stats.clusters == 1 and res.stats.largest_cluster == 5


def test_chain_of_near_copies_is_one_cluster() -> None:
    a = text(20, 300)
    b = perturb(a, 8, 1)
    c = perturb(b, 8, 2)
    res = deduplicate(from_records([conv("c:1", "synthetic", "q", a), conv("c:2", "synthetic", "q", b),
                                    conv("c:3", "synthetic", "q", c)]), DedupConfig(workers=1, threshold=0.7))
    assert res.kept.height == 1


def test_verification_removes_lsh_false_positives() -> None:
    a = text(30, 200)
    b = perturb(a, 25, 3)  # Jaccard of 5-grams far below 0.8, but many shared values
    df = from_records([conv("v:1", "synthetic", "q", a), conv("v:2", "synthetic", "q", b)])
    # (0, 1) weights: datasketch picks bands of one row, so nearly any overlap is a candidate.
    loose = DedupConfig(workers=1, lsh_weights=(0.0, 1.0), verify=False)
    strict = DedupConfig(workers=1, lsh_weights=(0.0, 1.0), verify=True)
    assert deduplicate(df, loose).kept.height == 1
    res = deduplicate(df, strict)
    assert res.kept.height == 2 and res.stats.lsh.rejected_false_positives == 1


def test_first_exchange_copy_drops_the_shorter() -> None:
    q, a = "Tell me about rivers", text(40)
    longer = conv("sg:0", "crowdsourced", q, a, more=[("And lakes?", text(41))])
    rows = [longer, conv("al:1", "synthetic", q, a), conv("al:2", "synthetic", q, perturb(a, 1, 9))]
    res = deduplicate(from_records(rows), DedupConfig(workers=1))
    assert list(res.kept["origin"]) == ["sg:0"]
    assert set(res.dropped["reason"]) == {"dedup.exact", "dedup.near"}
    assert all("first exchange of sg:0" in d for d in res.dropped["detail"])
    # two long conversations sharing only their opening are not copies of each other
    other = conv("sg:1", "crowdsourced", q, a, more=[("And seas?", text(42))])
    assert deduplicate(from_records([longer, other]), DedupConfig(workers=1)).kept.height == 2


def test_prompt_rule_is_optional_and_separate() -> None:
    rows = [conv("p:1", "synthetic", "Name a colour", "Blue."), conv("p:2", "expert", "name a  colour", "Red.")]
    assert deduplicate(from_records(rows), DedupConfig(workers=1)).kept.height == 2
    res = deduplicate(from_records(rows), DedupConfig(workers=1, prompt=True))
    assert list(res.kept["origin"]) == ["p:2"] and list(res.dropped["reason"]) == ["dedup.prompt"]


def _write(df: pl.DataFrame, path: Path) -> list[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(path)
    return [path]


def test_run_dedup_outputs_and_prior_index(tmp_path: Path) -> None:
    a, b = text(50), text(51)
    first = from_records([conv("r1:1", "synthetic", "q", a), conv("r1:2", "synthetic", "q", a),
                          conv("r1:3", "synthetic", "q", b)])
    run1 = tmp_path / "run1"
    stats = run_dedup(_write(first, tmp_path / "in1.parquet"), run1, DedupConfig(workers=1))
    assert stats.records_out == 2 and stats.dropped["dedup.exact"] == 1
    assert (run1 / "work/dedup/clusters.parquet").is_file() and (run1 / "dedup_index/meta.json").is_file()
    ledger = read_ledger(run1)
    assert ledger.height == 1 and ledger["stage"].item() == "dedup" and ledger["dup_of"].item() is not None
    assert sum(pl.read_parquet(p).height for p in stats.parts) == 2

    second = from_records([conv("r2:1", "expert", "q", a), conv("r2:2", "expert", "q", perturb(b, 1, 1)),
                           conv("r2:3", "expert", "q", text(52))])
    run2 = tmp_path / "run2"
    cfg = DedupConfig(workers=1, prior_indexes=[run1])
    stats2 = run_dedup(_write(second, tmp_path / "in2.parquet"), run2, cfg)
    assert stats2.records_out == 1 and stats2.prior_matches == {"exact": 1, "near": 1}
    led2 = read_ledger(run2).sort("origin")
    kept1 = dict(pl.concat([pl.read_parquet(p) for p in stats.parts]).select("origin", "conversation_id").iter_rows())
    assert led2["dup_of"].to_list() == [kept1["r1:1"], kept1["r1:3"]]
    assert all("earlier run" in d for d in led2["detail"])


def test_prior_index_with_other_settings_is_refused(tmp_path: Path) -> None:
    df = from_records([conv("r:1", "synthetic", "q", text(60))])
    run_dedup(_write(df, tmp_path / "in.parquet"), tmp_path / "run1", DedupConfig(workers=1))
    with pytest.raises(ValueError, match="num_perm"):
        run_dedup([tmp_path / "in.parquet"], tmp_path / "run2",
                  DedupConfig(workers=1, num_perm=64, prior_indexes=[tmp_path / "run1"]))
    with pytest.raises(FileNotFoundError, match="no dedup index"):
        run_dedup([tmp_path / "in.parquet"], tmp_path / "run3",
                  DedupConfig(workers=1, prior_indexes=[tmp_path / "nothing"]))


def test_two_runs_identical(tmp_path: Path) -> None:
    base = text(70, 150)
    rows = [conv(f"d:{i}", ["synthetic", "crowdsourced", "expert"][i % 3], "q", perturb(base, i % 4, i))
            for i in range(9)] + [conv(f"e:{i}", "synthetic", "q", text(80 + i)) for i in range(6)]
    src = _write(from_records(rows), tmp_path / "in.parquet")
    outs = []
    for name in ("a", "b"):
        stats = run_dedup(src, tmp_path / name, DedupConfig(workers=1))
        outs.append((pl.concat([pl.read_parquet(p) for p in stats.parts]), read_ledger(tmp_path / name),
                     pl.read_parquet(tmp_path / name / "work/dedup/clusters.parquet")))
    for x, y in zip(outs[0], outs[1], strict=True):
        assert x.equals(y)


def test_empty_input(tmp_path: Path) -> None:
    from pipeline.ingest.canonical import empty_canonical

    stats = run_dedup(_write(empty_canonical(), tmp_path / "in.parquet"), tmp_path / "run", DedupConfig(workers=1))
    assert stats.records_out == 0 and read_ledger(tmp_path / "run").height == 0
    assert all(pl.read_parquet(p).height == 0 for p in stats.parts)


@pytest.mark.parametrize("first_exchange", [True, False])
def test_keys_and_signatures_in_worker_batches_give_the_same_run(tmp_path: Path, monkeypatch,
                                                                 first_exchange: bool) -> None:
    """dedup.workers: keys, hashes and signatures computed by workers in batches read from the parts
    (one part empty, batches crossing no part) give the same kept rows, ledger, clusters and index
    as one process; exact, near and first-exchange copies all occur."""
    from pipeline.dedup import keyed as keyed_mod
    from pipeline.dedup.keyed import key_frame, keyed_parts

    base = text(90, 150)
    rows = [conv(f"d:{i}", ["synthetic", "crowdsourced", "expert"][i % 3], "q", perturb(base, i % 4, i))
            for i in range(40)]
    rows += [conv(f"e:{i}", "synthetic", f"q{i}", text(100 + i)) for i in range(200)]
    rows += [conv(f"x:{i}", "crowdsourced", f"q{i}", text(100 + i)) for i in range(0, 200, 7)]  # exact copies
    rows += [conv(f"f:{i}", "expert", f"q{i}", text(100 + i), more=[("more", text(400 + i))]) for i in range(0, 200, 9)]
    df = from_records(rows)
    paths = [_write(df.slice(0, 150), tmp_path / "a.parquet")[0], _write(df.slice(0, 0), tmp_path / "b.parquet")[0],
             _write(df.slice(150, 1000), tmp_path / "c.parquet")[0]]
    cfg_one = DedupConfig(workers=1, first_exchange=first_exchange)
    cfg_two = DedupConfig(workers=2, batch_rows=100, first_exchange=first_exchange)
    monkeypatch.setattr(keyed_mod, "PARALLEL_MIN_ROWS", 10)

    whole = key_frame(df, cfg_one)
    batched = keyed_parts(paths, df, cfg_two)
    assert batched.keys.equals(whole.keys)
    for name in ("exact_hash", "prompt_hash", "first_hash"):
        a, b = getattr(batched, name), getattr(whole, name)
        assert (a is None and b is None) or a.equals(b)
    assert np.array_equal(batched.sig, whole.sig) and np.array_equal(batched.opening_rows, whole.opening_rows)
    assert (batched.opening_sig is None) == (whole.opening_sig is None)
    if whole.opening_sig is not None:
        assert np.array_equal(batched.opening_sig, whole.opening_sig)

    outs = []
    for name, cfg in (("one", cfg_one), ("two", cfg_two)):
        stats = run_dedup(paths, tmp_path / name, cfg)
        outs.append((pl.concat([pl.read_parquet(p) for p in stats.parts]), read_ledger(tmp_path / name),
                     pl.read_parquet(tmp_path / name / "work/dedup/clusters.parquet"),
                     *[pl.read_parquet(f) for f in sorted((tmp_path / name / "dedup_index").glob("*.parquet"))]))
        reasons = set(read_ledger(tmp_path / name)["reason"])
        assert {"dedup.exact", "dedup.near"} <= reasons
    for x, y in zip(outs[0], outs[1], strict=True):
        assert x.equals(y)
