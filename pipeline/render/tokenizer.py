"""Tokenizers: load a given tokenizer.json / HF tokenizer dir, or train the embedded byte-level BPE.

The embedded tokenizer is trained on the texts handed in (the curated conversations rendered by the
template, split at special tokens so those never take part in merges), with the template's special
tokens added as whole tokens. It is cached under a key hashing the texts and every setting, so a
re-run with the same data skips training.

Offsets: a ByteLevel post-processor with `trim_offsets=true` moves token offsets off leading spaces;
masks are derived from offsets, so loaded tokenizers get `trim_offsets=false` (ids are unchanged).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import xxhash
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pipeline.core.rundir import atomic_write_bytes, atomic_write_json
from pipeline.render.templates import ChatTemplate

#: Bumped when training changes in a way that must invalidate cached tokenizers.
TRAIN_RECIPE = "bytelevel-bpe-v1"


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded or used; the message names the path and the fix."""


def _untrim_offsets(node: Any) -> Any:
    """Set every `trim_offsets` in a post-processor JSON tree to false."""
    if isinstance(node, dict):
        return {k: (False if k == "trim_offsets" else _untrim_offsets(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_untrim_offsets(v) for v in node]
    return node


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A `tokenizers.Tokenizer` from a tokenizer.json file or a HF tokenizer directory."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.exists():
        raise TokenizerError(
            f"tokenizer.path = {str(path)!r}: no tokenizer.json there (give a tokenizer.json file or a "
            "Hugging Face tokenizer directory that contains one)"
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        if data.get("post_processor"):
            data["post_processor"] = _untrim_offsets(data["post_processor"])
        return Tokenizer.from_str(json.dumps(data))
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file
        raise TokenizerError(f"{file}: not a valid tokenizer.json: {e}") from None


def ensure_special_tokens(tok: Tokenizer, template: ChatTemplate) -> list[str]:
    """Add the template's special tokens the tokenizer lacks (as whole, never-split tokens).

    Returns the ones added, so the run can report that the vocabulary grew."""
    missing = [t for t in template.special_tokens if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens(missing)
    return missing


def _split_specials(texts: Iterable[str], specials: Iterable[str]) -> Iterator[str]:
    pattern = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
    for text in texts:
        yield from (p for p in pattern.split(text) if p)


def train_key(texts: list[str], template: ChatTemplate, vocab_size: int, min_frequency: int) -> str:
    """Hash of everything the trained tokenizer depends on."""
    import tokenizers

    h = xxhash.xxh3_128()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    meta = [TRAIN_RECIPE, tokenizers.__version__, vocab_size, min_frequency, list(template.special_tokens)]
    h.update(json.dumps(meta).encode())
    return h.hexdigest()


def train_bpe(texts: list[str], template: ChatTemplate, vocab_size: int = 8192, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE tokenizer whose first ids are the template's special tokens."""
    tok = Tokenizer(models.BPE())
    # use_regex=True: GPT-2 pre-tokenization, so merges never cross word/space/newline classes.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(template.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_split_specials(texts, template.special_tokens), trainer=trainer, length=len(texts))
    return tok


def cached_bpe(
    texts: list[str], template: ChatTemplate, cache_dir: Path, vocab_size: int, min_frequency: int
) -> tuple[Tokenizer, str, bool]:
    """Train (or reuse from `cache_dir/<key>/tokenizer.json`) the embedded tokenizer.

    Returns (tokenizer, key, cache_hit)."""
    key = train_key(texts, template, vocab_size, min_frequency)
    file = Path(cache_dir) / key / "tokenizer.json"
    if file.exists():
        return Tokenizer.from_file(str(file)), key, True
    tok = train_bpe(texts, template, vocab_size, min_frequency)
    atomic_write_bytes(file, tok.to_str().encode("utf-8"))
    return tok, key, False


def tokenizer_hash(tok: Tokenizer) -> str:
    """Content hash of a tokenizer (its canonical JSON)."""
    return xxhash.xxh3_128_hexdigest(tok.to_str().encode("utf-8"))


def save_tokenizer_dir(tok: Tokenizer, template: ChatTemplate, out_dir: Path, max_seq_len: int) -> Path:
    """Write tokenizer.json + tokenizer_config.json (chat_template, bos/eos/pad) + special_tokens_map.json:
    a directory `transformers.AutoTokenizer.from_pretrained` loads with the run's template."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "tokenizer.json").write_text(tok.to_str(), encoding="utf-8")
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_seq_len,
        "clean_up_tokenization_spaces": False,
        **template.tokenizer_config(),
    }
    (tmp / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    specials = {k: v for k, v in template.tokenizer_config().items() if k.endswith("_token")}
    atomic_write_json(tmp / "special_tokens_map.json", specials)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)
    return out_dir
