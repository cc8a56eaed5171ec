"""The canonical conversation's rules: tiers, turn order, text normalisation and the stable content hash.

The canonical form itself is the columnar schema of pipeline.ingest.canonical (CANONICAL_SCHEMA); the
readers check every record against these rules before it gets there."""

from __future__ import annotations

import hashlib
import unicodedata
from enum import StrEnum
from typing import Literal

import orjson

Role = Literal["system", "user", "assistant", "tool"]


class Tier(StrEnum):
    """How much a source is trusted; dedup keeps the higher tier's copy (expert > … > synthetic)."""

    expert = "expert"
    crowdsourced = "crowdsourced"
    synthetic = "synthetic"


#: Lower rank wins a duplicate cluster.
TIER_RANK: dict[str, int] = {"expert": 0, "crowdsourced": 1, "synthetic": 2}


class TurnOrderError(ValueError):
    """The roles break the turn rules of `check_turn_order`; `code` is the ledger reason suffix."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def check_turn_order(roles: list[str], calls: list[bool] | None = None, *, trim: bool = False) -> int:
    """Raise TurnOrderError unless the roles are: an optional system first, then turns starting with
    user where user and assistant alternate, and `tool` messages only right after an assistant turn
    that calls tools (`calls[i]`: turn i has tool_calls) or after another tool message.

    A conversation must end with the assistant (`schema.no_assistant_reply`). With `trim`, the user
    and tool turns after its last assistant turn are allowed instead, and the function returns how
    many there are for the caller to cut and count (an agent trajectory ending on a tool result or a
    simulated user's sign-off, a chat whose last prompt went unanswered: the readers' rule, as
    OpenAssistant paths are cut). Without any assistant turn it is `schema.no_assistant_reply` either way."""
    start = 1 if roles and roles[0] == "system" else 0
    body = roles[start:]
    if "system" in body:
        raise TurnOrderError("schema.misplaced_system", "a system message may only come first")
    if not body:
        raise TurnOrderError("schema.no_assistant_reply", "no user or assistant turn")
    if calls is None and "tool" not in body:  # a plain chat (the hot path): user, assistant, user, …
        for i, role in enumerate(body):
            if role != ("user" if i % 2 == 0 else "assistant"):
                break
        else:
            if body[-1] == "assistant":
                return 0
            if len(body) > 1 and trim:
                return 1
            raise TurnOrderError("schema.no_assistant_reply", "the conversation does not end with an assistant reply"
                                 if len(body) > 1 else "the conversation has no assistant turn")
    calls = calls or [False] * len(roles)
    prev = None
    for i, role in enumerate(body, start):
        if role == "tool":
            if prev == "tool" or (prev == "assistant" and calls[i - 1]):
                prev = role
                continue
            raise TurnOrderError(
                "schema.tool_without_call",
                f"turn {i} is a tool result, but turn {i - 1} ({prev or 'none'}) made no tool call",
            )
        expected = "user" if prev in (None, "assistant") else "assistant"
        if role != expected:
            raise TurnOrderError(
                "schema.not_alternating",
                f"turn {i} is {role!r}, expected {expected!r} "
                "(user and assistant must alternate, starting with user; tool results follow a call)",
            )
        prev = role
    last = max((i for i, r in enumerate(roles) if r == "assistant"), default=-1)
    if last < 0:
        raise TurnOrderError("schema.no_assistant_reply", "the conversation has no assistant turn")
    if last < len(roles) - 1 and not trim:
        raise TurnOrderError("schema.no_assistant_reply", "the conversation does not end with an assistant reply")
    return len(roles) - 1 - last


def canonical_text(text: str) -> str:
    """Unicode NFC and no surrounding whitespace: what the canonical form stores."""
    return unicodedata.normalize("NFC", text).strip()


#: The message fields beyond (role, content); `conversation_id` hashes them only where set, so a
#: plain conversation keeps the id it had before they existed.
EXTRA_FIELDS = ("reasoning", "tool_calls", "tool_call_id", "name")


def _hashed_row(m: tuple[str, str] | dict) -> list:
    if not isinstance(m, dict):
        return [m[0], canonical_text(m[1])]
    row: list = [m["role"], canonical_text(m["content"] or "")]
    extra = {k: v for k in EXTRA_FIELDS if (v := m.get(k)) is not None and v != []}
    if extra:
        row.append(extra)
    return row


def conversation_id(messages: list[tuple[str, str]] | list[dict], tools: str | None = None, *,
                    canonical: bool = False) -> str:
    """Stable content hash (blake2b-128, hex) of the canonical conversation: each message's role and
    content, its reasoning, tool_calls, tool_call_id and name where set, and the offered `tools`.

    A message without the extra fields hashes as the pair [role, content] and a conversation without
    tools as the bare list of its messages: ids of plain conversations are those of older versions.
    `canonical`: the contents are already canonical_text (as the readers leave them), so they are not
    normalised again; the id is the same."""
    if canonical:
        rows = [[m["role"], m["content"]] if len(m) == 2 else _hashed_row(m) for m in messages]
    else:
        rows = [[m["role"], canonical_text(m["content"])] if type(m) is dict and len(m) == 2 else _hashed_row(m)
                for m in messages]
    payload = (orjson.dumps(rows, option=orjson.OPT_SORT_KEYS) if tools is None
               else orjson.dumps({"messages": rows, "tools": tools}, option=orjson.OPT_SORT_KEYS))
    return hashlib.blake2b(payload, digest_size=16).hexdigest()
