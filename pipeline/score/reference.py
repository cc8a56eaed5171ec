"""The reference model: its identity (a hash for the cache), and each conversation's token pair.

A conversation is scored on exactly its training targets, as the reference model would see them:
rendered with the reference model's own chat template and tokenizer (pipeline.render's
`render_all` + `encode_conversations`, the loss mask the contract defines), or, when the reference
model is the model being trained (`model.path`, with the run's tokenizer and template left to it), the
encode stage's own ids and masks, reused. Two sequences per conversation:

- prompted: the whole rendered conversation; targets are the assistant tokens (and their
  end-of-turn), the loss the trainer optimises;
- alone: the same target tokens with nothing before them but one start token (the model's BOS,
  else its EOS as a document boundary), so every target is predicted without its prompt — the
  "response alone" of Cherry (IFD) and Superfiltering, over the identical tokens.

Both are cut to `select.score_max_tokens`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: weight files up to this size are hashed by content; larger ones by name, size and mtime (hashing
#: gigabytes on every run would cost minutes)
CONTENT_HASH_LIMIT = 64 << 20
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


class ReferenceError(ValueError):
    """A reference model sftforge cannot use; the message says what to fix."""


def check_model_dir(path: Path) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ReferenceError(
            f"select.reference_model = {str(path)!r}: no config.json there; give a local Hugging Face model directory"
        )
    return path


def model_files(path: Path) -> list[Path]:
    """The files that decide the scores: config, tokenizer and weights."""
    path = Path(path)
    files = [path / "config.json", *(path / f for f in _TOKENIZER_FILES if (path / f).is_file())]
    files += sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES or p.name.endswith(".index.json"))
    return files


def model_hash(path: Path) -> str:
    """A hash of the reference model directory: content of config, tokenizer and weight files up to
    CONTENT_HASH_LIMIT each; name, size and mtime of bigger weight files."""
    h = hashlib.sha256()
    for f in model_files(check_model_dir(path)):
        st = f.stat()
        h.update(f.name.encode() + b"\0")
        if st.st_size <= CONTENT_HASH_LIMIT:
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def reuses_encode(cfg: Any) -> bool:
    """The reference model is the model being trained and the run renders with its own tokenizer and
    template: the encode stage's ids and masks are exactly the reference model's."""
    ref, model = cfg.select.reference_model, getattr(cfg.model, "path", None)
    if ref is None or model is None or Path(ref).resolve() != Path(model).resolve():
        return False
    tok = cfg.tokenizer.path
    return tok is not None and Path(tok).resolve() == Path(ref).resolve() and Path(str(cfg.template.name)) == Path(model)


@dataclass
class Pairs:
    """Per conversation: the prompted sequence, its target mask, the start token of the alone one."""

    ids: list[np.ndarray]
    masks: list[np.ndarray]
    start_token: int
    errors: list[str | None]
    how: str

    def alone(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The response alone: the start token, then the prompted sequence's targets in order."""
        targets = self.ids[i][self.masks[i].astype(bool)]
        ids = np.concatenate([[self.start_token], targets]).astype(np.int64)
        mask = np.ones(len(ids), dtype=bool)
        mask[0] = False
        return ids, mask


def start_token(model_dir: Path, vocab: dict[str, int] | None = None) -> int:
    """The model's BOS id, else its EOS id (a document boundary), else 0."""
    conf = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    for key in ("bos_token_id", "eos_token_id"):
        v = conf.get(key)
        if isinstance(v, list):
            v = v[0] if v else None
        if isinstance(v, int):
            return v
    if vocab:
        for cand in ("<|endoftext|>", "<s>", "<|begin_of_text|>", "<|im_end|>", "</s>"):
            if cand in vocab:
                return vocab[cand]
    return 0


def reference_template(model_dir: Path, fallback: str) -> Any:
    """The reference model's own chat template; without one, the run's template (`fallback`)."""
    from pipeline.render.templates import TemplateError, load_template

    try:
        return load_template(str(model_dir), Path(model_dir))
    except (TemplateError, ValueError):
        return load_template(fallback, Path(model_dir))


def reference_pairs(messages: list[Any], model_dir: Path, cfg: Any, encoded: dict[str, Any] | None = None,
                    conversation_ids: list[str] | None = None) -> Pairs:
    """The token pairs of `messages` for the reference model (see the module docstring).

    `encoded`: {conversation_id: (input_ids, loss_mask)} of the encode stage, reused when
    `reuses_encode(cfg)`; otherwise the conversations are rendered with the reference's template and
    tokenizer."""
    limit = cfg.select.score_max_tokens
    if encoded is not None and conversation_ids is not None and reuses_encode(cfg):
        ids, masks, errors = [], [], []
        for cid in conversation_ids:
            i, m = encoded.get(cid, (None, None))
            ok = i is not None and len(i) > 0
            ids.append(np.asarray(i if ok else [], dtype=np.int64)[:limit])
            masks.append(np.asarray(m if ok else [], dtype=np.uint8)[:limit])
            errors.append(None if ok else "not encoded")
        return Pairs(ids, masks, start_token(model_dir), errors, "the encode stage's ids (reference = model.path)")

    from pipeline.render.masks import MaskOptions, encode_conversations
    from pipeline.render.tokenizer import ensure_special_tokens, load_tokenizer

    tok = load_tokenizer(model_dir)
    template = reference_template(model_dir, str(cfg.template.name))
    added = ensure_special_tokens(tok, template)
    msgs = [_plain(m) for m in messages]
    enc = encode_conversations(msgs, template, tok, MaskOptions(cfg.template.train_on, False, None, "drop"))
    ids = [np.asarray(i, dtype=np.int64)[:limit] for i in enc.ids]
    masks = [np.asarray(m, dtype=np.uint8)[:limit] for m in enc.masks]
    errors = [d if r else None for r, d in zip(enc.reasons, enc.details, strict=True)]
    vocab = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")).get("vocab_size")
    top = max((int(i.max()) for i in ids if len(i)), default=-1)
    if vocab is not None and top >= int(vocab):
        raise ReferenceError(
            f"select.reference_model {str(model_dir)!r}: rendering with template {template.name!r} needs tokens the "
            f"model does not embed ({', '.join(added) or f'id {top}'} >= vocab_size {vocab}): give a model directory "
            "with a chat_template (tokenizer_config.json), or set template.name to one its tokenizer can encode"
        )
    return Pairs(ids, masks, start_token(model_dir, tok.get_vocab()), errors,
                 f"the reference model's tokenizer and template ({template.name})")


def _plain(messages: Any) -> list[dict[str, Any]]:
    """Messages as the templates take them; fields the canonical form is gaining pass through."""
    return [dict(m) for m in messages] if messages is not None else []
