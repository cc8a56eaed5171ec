"""The canonical conversation's rules: tiers, turn order, text normalisation and the stable content hash.

The canonical form itself is the columnar schema of pipeline.ingest.canonical (CANONICAL_SCHEMA); the
readers check every record against these rules before it gets there."""

from __future__ import annotations

import hashlib
import unicodedata
from enum import StrEnum
from typing import Literal

import orjson

Role = Literal["system", "user", "assistant"]


class Tier(StrEnum):
    """How much a source is trusted; dedup keeps the higher tier's copy (expert > … > synthetic)."""

    expert = "expert"
    crowdsourced = "crowdsourced"
    synthetic = "synthetic"


#: Lower rank wins a duplicate cluster.
TIER_RANK: dict[str, int] = {"expert": 0, "crowdsourced": 1, "synthetic": 2}


class TurnOrderError(ValueError):
    """The roles do not form system? (user assistant)+; `code` is the ledger reason suffix."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def check_turn_order(roles: list[str]) -> None:
    """Raise TurnOrderError unless roles are: optional system, then user/assistant alternating,
    starting with user and ending with assistant."""
    body = roles[1:] if roles and roles[0] == "system" else roles
    if "system" in body:
        raise TurnOrderError("schema.misplaced_system", "a system message may only come first")
    if not body:
        raise TurnOrderError("schema.no_assistant_reply", "no user or assistant turn")
    for i, role in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise TurnOrderError(
                "schema.not_alternating",
                f"turn {i + (len(roles) - len(body))} is {role!r}, expected {expected!r} "
                "(user and assistant must alternate, starting with user)",
            )
    if body[-1] != "assistant":
        raise TurnOrderError("schema.no_assistant_reply", "the conversation does not end with an assistant reply")


def canonical_text(text: str) -> str:
    """Unicode NFC and no surrounding whitespace: what the canonical form stores."""
    return unicodedata.normalize("NFC", text).strip()


def conversation_id(messages: list[tuple[str, str]] | list[dict]) -> str:
    """Stable content hash (blake2b-128, hex) of the canonical (role, content) pairs."""
    pairs = [(m["role"], m["content"]) if isinstance(m, dict) else m for m in messages]
    payload = orjson.dumps([[r, canonical_text(c)] for r, c in pairs])
    return hashlib.blake2b(payload, digest_size=16).hexdigest()
