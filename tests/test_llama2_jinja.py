"""One renderer per built-in: the Python fast path of every built-in template renders the same text
and the same turn spans as the Jinja template that is saved and served, on random role orders (system
anywhere, tool results, tool calls, reasoning), or both refuse the conversation. Llama 2's two used
to disagree on where the system prompt goes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from render_tool_fixtures import text, tool_conversations

from pipeline.render.templates import BUILTIN_TEMPLATES, TemplateError, jinja_render_text

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def any_roles(draw: st.DrawFn) -> dict:
    """Messages in any role order, some with tool calls or reasoning; tools or not."""
    msgs = []
    for k in range(draw(st.integers(1, 6))):
        role = draw(st.sampled_from(["system", "user", "assistant", "tool"]))
        m = {"role": role, "content": draw(st.one_of(text, st.just("")))}
        if role == "assistant" and draw(st.booleans()):
            m["reasoning"] = draw(text)
        if role == "assistant" and draw(st.integers(0, 3)) == 0:
            m["tool_calls"] = [{"id": f"c{k}", "name": "search", "arguments": '{"q": "x"}'}]
        msgs.append(m)
    tools = draw(st.sampled_from([None, '[{"name": "search", "parameters": {}}]']))
    return {"messages": msgs, "tools": tools}


def _outcome(template, conv):  # noqa: ANN001, ANN202
    try:
        return template.render(conv["messages"], conv["tools"])
    except TemplateError:
        return "refused"


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
@SETTINGS
@given(conv=st.one_of(any_roles(), tool_conversations(reasoning=True)))
def test_python_renderer_equals_served_jinja(name: str, conv: dict) -> None:
    template = BUILTIN_TEMPLATES[name]
    fast, served = _outcome(template, conv), _outcome(template.served(), conv)
    assert fast == served
    if fast != "refused":  # and the served text is what transformers renders from the saved template
        specials = {"bos_token": template.bos_token or "", "eos_token": template.eos_token}
        assert jinja_render_text(template.jinja, conv["messages"], conv["tools"], **specials) == fast.text


@pytest.mark.parametrize("roles", [
    ["system", "system", "user", "assistant"],
    ["system", "assistant", "user", "assistant"],
    ["user", "system", "assistant"],
    ["system", "assistant"],
])
def test_llama2_system_prompt_cases_agree(roles: list[str]) -> None:
    conv = {"messages": [{"role": r, "content": f"{r} {k}"} for k, r in enumerate(roles)], "tools": None}
    t = BUILTIN_TEMPLATES["llama2"]
    assert _outcome(t, conv) == _outcome(t.served(), conv)


def test_llama2_keeps_the_system_prompt_in_the_first_user_turn() -> None:
    msgs = [{"role": "system", "content": "S"}, {"role": "assistant", "content": "A"},
            {"role": "user", "content": "U"}, {"role": "assistant", "content": "B"}]
    text = BUILTIN_TEMPLATES["llama2"].served().render(msgs).text
    assert text == " A </s><s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST] B </s>"
    with pytest.raises(TemplateError, match="one system message"):
        BUILTIN_TEMPLATES["llama2"].render([msgs[0], msgs[0], *msgs[2:]])
