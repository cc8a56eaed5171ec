"""OpenAssistant oasst1 flat message rows -> conversations, by rebuilding the trees from `parent_id`.

A tree's rows may sit anywhere in the file, so all rows are read first, keeping only what path
selection needs (id, parent, role, text, usable, rank, order) — not the rest of each row (detoxify,
emojis, labels, …), which is most of its bytes.

Records and their origins (CONTRACTS.md):
- a tree is one record, `<root message_id>`, in "best" mode; in "all" mode every distinct
  root-to-leaf path is one, `<root>/<last message_id>`;
- an orphan row (its parent is not in the file) is one quarantined record, `<its message_id>`,
  standing for its whole subtree (schema.orphan_reply); rows caught in a parent cycle likewise;
- a row that is not valid JSON or not a valid message is one quarantined record by its line.

Skipped on purpose: deleted messages and messages whose review failed (`review_result` false;
null means not yet reviewed and is kept), with their whole subtree. A tree whose root is skipped, or
which has no usable reply, is one dropped record (ingest.oasst_*).

Best path: from the root, at every branching take the child with the lowest `rank` (0 = best;
unranked after ranked; ties by file order). Among prompter follow-ups, only those that have a usable
assistant reply compete (a follow-up nobody answered can't end a conversation). A trailing prompter
turn without an answer is cut, so every conversation ends with the assistant.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Literal, NamedTuple

import orjson

from pipeline.ingest.files import RawItem, RecordError, to_json_text
from pipeline.ingest.formats import Messages, finish, parse
from schemas.records import OasstMessage

ROLES = {"prompter": "user", "assistant": "assistant"}


class _Row(NamedTuple):
    message_id: str
    parent_id: str | None
    role: str  # canonical: user | assistant
    text: str
    usable: bool
    skip_reason: str | None  # ingest.oasst_deleted | ingest.oasst_review_failed
    rank: float  # inf when unranked
    order: int


class Outcome(NamedTuple):
    """What became of one OASST record: kept (messages), quarantined (error, raw) or dropped (code, detail)."""

    outcome: Literal["kept", "quarantined", "dropped"]
    locator: str
    messages: Messages | None = None
    original_id: str | None = None
    code: str | None = None
    detail: str | None = None
    raw: bytes | str | None = None


def _row(value: object, order: int) -> _Row:
    if isinstance(value, dict) and isinstance(value.get("rank"), float) and math.isnan(value["rank"]):
        value = {**value, "rank": None}  # the parquet export writes unranked as NaN
    m: OasstMessage = parse(OasstMessage, value)
    role = ROLES.get(m.role)
    if role is None:
        raise RecordError("schema.unknown_role", f"field 'role': unknown role {m.role!r} (expected prompter or assistant)")
    skip = "ingest.oasst_deleted" if m.deleted else "ingest.oasst_review_failed" if m.review_result is False else None
    rank = math.inf if m.rank is None else m.rank
    return _Row(m.message_id, m.parent_id, role, m.text, skip is None, skip, rank, order)


def _raw(rows: list[_Row]) -> str:
    """A compact re-serialisation of the rows a record was built from (for quarantine)."""
    return orjson.dumps([{"message_id": r.message_id, "parent_id": r.parent_id, "role": r.role, "text": r.text}
                         for r in rows]).decode("utf-8")


def assemble(items: Iterable[RawItem], mode: Literal["best", "all"] = "best") -> Iterator[Outcome]:
    """Every record of an OASST message file, each exactly once (see the module docstring)."""
    rows: dict[str, _Row] = {}
    bad_locators: set[str] = set()
    for order, item in enumerate(items):
        if item.error is not None:
            bad_locators.add(item.locator)
            yield Outcome("quarantined", item.locator, code=item.error.code, detail=item.error.message, raw=item.raw)
            continue
        try:
            row = _row(item.value, order)
        except RecordError as e:
            bad_locators.add(item.locator)
            yield Outcome("quarantined", item.locator, code=e.code, detail=e.message,
                          raw=item.raw if item.raw is not None else to_json_text(item.value))
            continue
        if row.message_id in rows:
            bad_locators.add(item.locator)
            yield Outcome("quarantined", item.locator, code="schema.duplicate_id",
                          detail=f"field 'message_id': {row.message_id!r} already appeared earlier in the file",
                          raw=item.raw if item.raw is not None else to_json_text(item.value))
            continue
        rows[row.message_id] = row

    def loc(message_id: str) -> str:
        # A message id that equals a bad row's line number must not collide with its origin.
        return f"message:{message_id}" if message_id in bad_locators else message_id

    children: dict[str, list[_Row]] = {}
    roots: list[_Row] = []
    orphans: list[_Row] = []
    for r in rows.values():
        if r.parent_id is None:
            roots.append(r)
        elif r.parent_id in rows:
            children.setdefault(r.parent_id, []).append(r)
        else:
            orphans.append(r)

    def usable_kids(r: _Row) -> list[_Row]:
        return [c for c in children.get(r.message_id, ()) if c.usable]

    for root in roots:
        yield from _tree(root, usable_kids, mode, loc)
    for orphan in orphans:
        yield Outcome("quarantined", loc(orphan.message_id), code="schema.orphan_reply",
                      detail=f"field 'parent_id': parent {orphan.parent_id!r} of message {orphan.message_id!r} is not "
                             "in the source (the reply and its subtree cannot be placed in a conversation)",
                      raw=_raw([orphan]))
    # Rows reachable from neither a root nor an orphan sit in a parent_id cycle.
    seen: set[str] = set()
    stack = [r.message_id for r in roots + orphans]
    while stack:
        mid = stack.pop()
        if mid not in seen:
            seen.add(mid)
            stack.extend(c.message_id for c in children.get(mid, ()))
    for r in rows.values():
        if r.message_id not in seen:
            yield Outcome("quarantined", loc(r.message_id), code="schema.orphan_reply",
                          detail=f"field 'parent_id': message {r.message_id!r} is in a parent_id cycle and has no root",
                          raw=_raw([r]))


def _trim(path: list[_Row]) -> list[_Row]:
    """Cut trailing prompter turns that nobody answered (but keep a malformed path for finish to reject)."""
    while len(path) >= 2 and path[-1].role == "user" and path[-2].role == "assistant":
        path = path[:-1]
    return path


def _tree(root: _Row, usable_kids, mode: str, loc) -> Iterator[Outcome]:
    if not root.usable:
        what = "deleted" if root.skip_reason == "ingest.oasst_deleted" else "failed review"
        yield Outcome("dropped", loc(root.message_id), code=root.skip_reason,
                      detail=f"the tree's root prompt was {what}; the tree is skipped")
        return
    paths = [_best_path(root, usable_kids)] if mode == "best" else _all_paths(root, usable_kids)
    if paths == [[root]] and root.role == "user":
        yield Outcome("dropped", loc(root.message_id), code="ingest.oasst_no_reply",
                      detail="the tree has no usable assistant reply (none yet, or all deleted / failed review)")
        return
    for path in paths:
        locator = loc(root.message_id) if mode == "best" else f"{loc(root.message_id)}/{path[-1].message_id}"
        original_id = root.message_id if mode == "best" else f"{root.message_id}/{path[-1].message_id}"
        try:
            messages = finish([{"role": r.role, "content": r.text} for r in path])
        except RecordError as e:
            yield Outcome("quarantined", locator, code=e.code, detail=e.message, raw=_raw(path))
            continue
        yield Outcome("kept", locator, messages=messages, original_id=original_id)


def _best_path(root: _Row, usable_kids) -> list[_Row]:
    # No cycle guard needed: a node reached from a root has a parent chain ending there.
    path, cur = [root], root
    while True:
        kids = usable_kids(cur)
        if not kids:
            return _trim(path)
        # A prompter follow-up only competes if someone answered it.
        answered = [k for k in kids if k.role != "user" or any(g.role == "assistant" for g in usable_kids(k))]
        cur = min(answered or kids, key=lambda k: (k.rank, k.order))
        path.append(cur)


def _all_paths(root: _Row, usable_kids) -> list[list[_Row]]:
    """Every root-to-leaf path, trimmed, once per distinct last message."""
    out: dict[str, list[_Row]] = {}
    stack = [[root]]
    while stack:
        path = stack.pop()
        kids = usable_kids(path[-1])
        if not kids:
            trimmed = _trim(path)
            out.setdefault(trimmed[-1].message_id, trimmed)
            continue
        stack.extend([*path, k] for k in reversed(kids))
    return sorted(out.values(), key=lambda p: [r.order for r in p])
