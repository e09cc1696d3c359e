"""The student template's tool support: SmolLM2's has none (plain-text form, said so); a template that renders
tools and calls gets the conversation as it is, with the tools argument."""

import copy

import pytest

from distill_assets.lib.chat_template import TOOL_FORMAT_NATIVE, TOOL_FORMAT_PLAIN, render, student_view, tool_format
from distill_assets.lib.conversation import TOOLS_HEADER
from distill_assets.lib.tokenizer import student_tokenizer

TOOLS = [{"type": "function", "function": {"name": "lookup_order", "description": "Look up an order.",
                                           "parameters": {"type": "object", "properties": {"order_id": {}}}}}]
MSGS = [{"role": "system", "content": "S"}, {"role": "user", "content": "Where is A-1?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "lookup_order", "arguments": '{"order_id": "A-1"}'}}]}]
# a minimal template with tool support, in the style of Qwen's / Llama 3.1's
TOOL_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }};{% endfor %}</tools>\n{% endif %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content or '' }}"
    "{% for c in m.tool_calls or [] %}<call>{{ c.function.name }} {{ c.function.arguments | tojson }}</call>"
    "{% endfor %}</{{ m.role }}>\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


@pytest.fixture(scope="module")
def smol():
    return student_tokenizer()


def test_smollm2_has_no_tool_support_so_the_plain_text_form_is_used(smol):
    assert tool_format(smol) == TOOL_FORMAT_PLAIN
    text = render(smol, MSGS, TOOLS)
    assert TOOLS_HEADER in text and '{"tool_call": {"name": "lookup_order", "arguments": {"order_id": "A-1"}}}' in text


def test_a_template_with_tool_support_gets_tools_natively(smol):
    tok = copy.deepcopy(smol)
    tok.chat_template = TOOL_TEMPLATE
    tok._distill_tool_format = None
    assert tool_format(tok) == TOOL_FORMAT_NATIVE
    text = render(tok, MSGS, TOOLS)
    assert text.startswith("<tools>lookup_order;</tools>") and '<call>lookup_order {"order_id": "A-1"}</call>' in text
    view, tools = student_view(MSGS, TOOLS, TOOL_FORMAT_NATIVE)
    assert tools == TOOLS and view[2]["tool_calls"][0]["function"]["arguments"] == {"order_id": "A-1"}


def test_rows_without_tools_render_as_before(smol):
    plain = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert render(smol, plain) == smol.apply_chat_template(plain, tokenize=False)
