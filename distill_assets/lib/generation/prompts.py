"""Prompts of the five generation methods, and parsers of the teacher's answers to them.

- response: the teacher answers each seed;
- cot: the teacher solves each seed step by step (the training pair keeps the plain problem as the prompt);
- self_instruct: the teacher writes new instructions from a few seed examples, then answers them;
- evol_instruct: in-depth / in-breadth rewrites for N rounds, each round answered, the parent chain kept;
- task_specific: real inputs answered, plus similar synthetic inputs written by the teacher and answered.

A seed may be a conversation: the teacher then plays the assistant and answers its last user turn with the whole
conversation as context. With `conversation_turns: N`, the teacher also plays the user (USER_TURN_TEMPLATE) and the
conversation grows to N assistant turns; it stops early at a tool call (distill runs no tools).
"""

from __future__ import annotations

import json
import re

from distill_assets.lib.conversation import transcript
from distill_assets.lib.ids import content_hash
from distill_assets.lib.tasks import Category

COT_TEMPLATE = (
    "Solve this problem step by step. Show your reasoning at each step before giving the final answer.\n\n"
    "Problem: {problem}\n\nLet me think through this carefully:"
)
SELF_INSTRUCT_TEMPLATE = (
    "We are building training data for this task: {description}\n\n"
    "Here are example requests:\n{examples}\n\n"
    "Write {n} new requests of the same kind and difficulty, each different from the examples and from each "
    "other. Write one per line, numbered 1. to {n}. Do not answer them."
)
TASK_SPECIFIC_TEMPLATE = (
    "Here is a real input from our system ({description}):\n\n{input}\n\n"
    "Write {n} new, realistic inputs of the same kind, with different details but the same style and "
    "length. Write one per line, numbered 1. to {n}. Do not answer them."
)
EVOL_TEMPLATE = (
    "I want you to act as an instruction rewriter. Rewrite the given instruction into a {direction} version.\n"
    "{operation}\n"
    "The rewritten instruction must be self-contained, reasonable and answerable, and must not mention the "
    "original. Reply with the rewritten instruction only.\n\n"
    "#Given Instruction#:\n{instruction}\n\n#Rewritten Instruction#:"
)
# Evol-Instruct's evolution operations: in-depth makes harder, in-breadth makes more diverse.
EVOL_OPERATIONS = {
    "add_constraints": ("more difficult", "Add one more constraint or requirement to it."),
    "deepen": ("more difficult", "Ask for a deeper answer: more detail, with an example."),
    "increase_reasoning": ("more difficult", "Make it require more reasoning steps or edge cases."),
    "complicate_input": ("more difficult", "Complicate the input: add more context, values or variables."),
    "add_requirements": ("more difficult", "Require handling errors or unusual cases gracefully."),
    "concretize": ("more specific", "Replace general concepts with a specific real-world situation."),
    "mutate": ("different", "Change the domain or scenario while keeping the same structure."),
    "generate_new": ("new but related", "Create a related but different problem of the same type."),
}
USER_TURN_TEMPLATE = (
    "You are role-playing a user of this assistant: {description}\n\n"
    "The conversation so far:\n{transcript}\n\n"
    "Write the user's next message: a natural follow-up (a missing detail, a related question, or a reaction "
    "to the last answer). Reply with that one message only, in the user's voice, without a label."
)
_NUMBERED = re.compile(r"^\s*(?:\d{1,3}[\.\):]|[-*•])\s+(.+?)\s*$")
_LABELS = re.compile(r"^\s*(?:#*\s*(?:rewritten|new|evolved)\s+instruction#*\s*:?)\s*", re.I)


# ------------------------------------------------------------------------------------------------------------
def answer_messages(category: Category, turns: list[dict], method: str, sample_index: int = 0) -> list[dict]:
    """What the teacher is sent to answer the last user turn of `turns` (the conversation without system). The
    student trains on `training_messages`, with the plain system prompt."""
    turns = [dict(m) for m in turns]
    last = turns[-1]["content"] if turns and turns[-1]["role"] == "user" else None
    system = category.system_prompt
    if category.verify == "label" and category.labels and category.label_order == "rotate" and last is not None:
        # each sample of a message starts the list at the next label (permutation self-consistency): a weak
        # teacher's lean towards the label it reads first is spread over the labels, not fixed per message
        k = (int(content_hash("label_order", last), 16) + sample_index) % len(category.labels)
        order = category.labels[k:] + category.labels[:k]
        system = f"{system}\nThe possible labels: {', '.join(order)}."
    if method == "cot" and last is not None:
        turns[-1]["content"] = COT_TEMPLATE.format(problem=last)
    return [{"role": "system", "content": system}, *turns]


def label_schema(category: Category) -> dict | None:
    """The answer schema of a label category: one of its labels, nothing else."""
    if category.verify != "label" or not category.labels or not category.constrain_labels:
        return None
    return {"type": "object", "properties": {"label": {"type": "string", "enum": list(category.labels)}},
            "required": ["label"]}


def answer_text(content: str, schema: dict | None) -> str:
    """What the student trains on: the label itself when the answer came through the label schema."""
    if schema is None:
        return content
    try:
        value = json.loads(content)
    except ValueError:
        return content  # unreadable: verification fails it with the raw text as evidence
    label = value.get("label") if isinstance(value, dict) else None
    return label if isinstance(label, str) and label else content


def training_messages(category: Category, turns: list[dict]) -> list[dict]:
    """The chat example the student trains on: the plain turns, never the generation scaffold."""
    return [{"role": "system", "content": category.system_prompt}, *turns]


def user_turn_messages(category: Category, turns: list[dict], limit: int = 4000) -> list[dict]:
    """The teacher, as the user simulator, asked for the next user turn of `turns`."""
    return [{"role": "user", "content": USER_TURN_TEMPLATE.format(description=category.description,
                                                                 transcript=transcript(turns, limit))}]


_USER_LABEL = re.compile(r"^\s*(?:\*\*)?(?:user|customer|human|me)(?:\*\*)?\s*:\s*", re.I)


def parse_user_turn(text: str | None) -> str | None:
    """The simulated user message: label and quotes removed, first paragraph; None when nothing usable."""
    t = _USER_LABEL.sub("", (text or "").strip()).strip()
    t = t.split("\n\n")[0].strip().strip('"').strip()
    # a simulator that answers as the assistant instead is not a user turn
    if len(t) < 3 or re.match(r"^\s*assistant\s*:", t, re.I):
        return None
    return t


def self_instruct_messages(category: Category, examples: list[str], n: int) -> list[dict]:
    listed = "\n".join(f"{i}. {e}" for i, e in enumerate(examples, 1))
    return [{"role": "user", "content": SELF_INSTRUCT_TEMPLATE.format(description=category.description,
                                                                     examples=listed, n=n)}]


def task_specific_messages(category: Category, real_input: str, n: int) -> list[dict]:
    return [{"role": "user", "content": TASK_SPECIFIC_TEMPLATE.format(description=category.description,
                                                                     input=real_input, n=n)}]


def evol_operation(seed: str, round_: int) -> str:
    """Deterministic choice of evolution operation per (seed, round), so reruns hit the cache."""
    names = sorted(EVOL_OPERATIONS)
    return names[int(content_hash("evol", seed, round_), 16) % len(names)]


def evol_messages(instruction: str, operation: str) -> list[dict]:
    direction, op = EVOL_OPERATIONS[operation]
    return [{"role": "user", "content": EVOL_TEMPLATE.format(direction=direction, operation=op,
                                                            instruction=instruction)}]


def parse_instruction_list(text: str, n: int, exclude: list[str] = ()) -> list[str]:
    """Numbered or bulleted lines -> up to n distinct instructions (falls back to non-empty lines)."""
    lines = [l for l in (text or "").splitlines() if l.strip()]
    items = [m.group(1) for m in (_NUMBERED.match(l) for l in lines) if m]
    if not items:
        items = [l.strip() for l in lines]
    seen = {e.strip().casefold() for e in exclude}
    out = []
    for it in items:
        it = it.strip().strip('"').strip()
        if len(it) < 10 or it.casefold() in seen or it.endswith(":"):
            continue
        seen.add(it.casefold())
        out.append(it)
        if len(out) >= n:
            break
    return out


def parse_evolved(text: str) -> str | None:
    text = (text or "").strip()
    text = _LABELS.sub("", text).strip().strip('"').strip()
    # the rewrite is the first paragraph; later ones are usually the model answering it
    first = text.split("\n\n")[0].strip()
    return first if len(first) >= 10 else None
