"""Reasoning traces: which of them a conversation is trained on, and as what the model sees them.

Templates differ: ours (chatml, llama3) write every assistant turn's reasoning as a `<think>` block;
Qwen3's writes it only for the turns after the last user message, so an earlier turn's reasoning is
gone from any rendering of the whole conversation. `template.reasoning` chooses:

- `split` (default): train every reasoning trace exactly as the template shows it at inference. When
  the template drops earlier turns' reasoning, the conversation is cut after the last assistant turn
  of every exchange (the assistant turns between two user turns: answers, tool calls) that has
  reasoning and that a user turn follows: one training example per such exchange, rendered as if it
  were the last, plus the whole conversation; each example trains only the assistant turns not
  trained by an earlier one (the others are context, shown as the template shows them). When the template writes all reasoning, or
  none, this is `keep` (one example).
- `keep`: one example, every turn's reasoning handed to the template; what it writes is trained (a
  template that drops earlier reasoning then refuses such conversations: `tokenize.template_error`).
- `last`: one example; reasoning kept only on the assistant turns after the last user message.
- `drop`: one example without any reasoning.

An assistant content that starts with a `<think>...</think>` block and has no separate reasoning is
split into the two first (as Qwen3's template does), whatever the mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REASONING_MODES = ("split", "keep", "last", "drop")


def split_think(m: dict[str, Any]) -> dict[str, Any]:
    """An assistant message whose content holds `<think>R</think>C` as reasoning R and content C."""
    content = m.get("content") or ""
    if m.get("role") != "assistant" or m.get("reasoning") or "</think>" not in content:
        return m
    head, _, rest = content.partition("</think>")
    if "<think>" in head and head.split("<think>")[0].strip():
        return m  # text before <think>: not a leading reasoning block
    return {**m, "reasoning": head.split("<think>")[-1].strip() or None, "content": rest.strip()}


def _without_reasoning(m: dict[str, Any]) -> dict[str, Any]:
    return {**m, "reasoning": None} if m.get("reasoning") else m


def training_examples(
    messages: Sequence[dict[str, Any]], mode: str, *, renders_reasoning: bool, renders_past_reasoning: bool,
) -> list[tuple[list[dict[str, Any]], int]]:
    """`(messages, first_trained)` pairs: render `messages`; its assistant turns before index
    `first_trained` are context, not targets."""
    msgs = [split_think(m) for m in messages]
    if mode == "drop":
        return [([_without_reasoning(m) for m in msgs], 0)]
    users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
    last_user = users[-1] if users else -1
    if mode == "last":
        return [([_without_reasoning(m) if i < last_user else m for i, m in enumerate(msgs)], 0)]
    if mode == "keep" or not renders_reasoning or renders_past_reasoning:
        return [(msgs, 0)]
    # cut after the last assistant turn before each user turn whose exchange (the assistant turns since
    # the previous user turn: answers, tool calls) has reasoning the template would hide later on
    cuts, exchange = [], []
    for i, m in enumerate(msgs):
        if m["role"] == "user":
            if any(msgs[k].get("reasoning") for k in exchange):
                cuts.append(exchange[-1])
            exchange = []
        elif m["role"] == "assistant":
            exchange.append(i)
    examples, first = [], 0
    for c in cuts:
        examples.append((msgs[: c + 1], first))
        first = c + 1
    if any(m["role"] == "assistant" for m in msgs[first:]) or not examples:
        examples.append((msgs, first))
    return examples


def has_reasoning(messages: Sequence[dict[str, Any]]) -> bool:
    """Whether any assistant turn carries reasoning (a field, or a leading <think> block)."""
    return any(split_think(m).get("reasoning") for m in messages if m.get("role") == "assistant")
