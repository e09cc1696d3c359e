import json

import pytest

from distill_assets.lib.errors import InputError
from distill_assets.lib.training.data import parse_conversation, split_dataset, tokenize_conversation
from tests.lib.training.tiny_model import VALIDATION_FRACTION, clean_frame, tiny_plan

SYSTEM = {"role": "system", "content": "You are a terse assistant."}
TOOLS = [{"type": "function", "function": {"name": "lookup_order", "description": "Look up an order.",
                                           "parameters": {"type": "object",
                                                          "properties": {"order_id": {"type": "string"}}}}}]
MULTI = [SYSTEM, {"role": "user", "content": "Hi, I have a question."},
         {"role": "assistant", "content": "Sure, what is it?"},
         {"role": "user", "content": "Where is order A-1001?"},
         {"role": "assistant", "content": "", "tool_calls": [
             {"id": "c1", "type": "function", "function": {"name": "lookup_order",
                                                           "arguments": '{"order_id": "A-1001"}'}}]},
         {"role": "tool", "tool_call_id": "c1", "content": '{"status": "shipped"}'},
         {"role": "assistant", "content": "It shipped yesterday."}]


def test_conversations_are_checked():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"}]
    assert parse_conversation(json.dumps(msgs)) == msgs
    assert parse_conversation(json.dumps(MULTI)) == MULTI


@pytest.mark.parametrize("bad, why", [
    ("not json", "JSON"),
    (json.dumps([{"role": "user", "content": "Q"}]), "last message"),
    (json.dumps([{"role": "user", "content": "Q"}, {"role": "assistant", "content": " "}]), "empty"),
    (json.dumps([{"role": "assistant", "content": "A"}]), "no user"),
    (json.dumps([{"role": "user", "content": "Q"}, {"role": "user", "content": "Q2"},
                 {"role": "assistant", "content": "A"}]), "wrong_roles_or_order"),
])
def test_bad_conversations(bad, why):
    with pytest.raises(InputError, match=why):
        parse_conversation(bad)


def test_label_mask_trains_every_assistant_turn_and_nothing_else(tiny):
    """The mask across turns: the trained tokens are exactly the three assistant turns (the tool call in its
    plain-text line), each with its end-of-turn marker; system, user, tool result and role headers are -100."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny["base"]))
    out = tokenize_conversation(tok, MULTI, TOOLS)
    ids, labels = out["input_ids"], out["labels"]
    assert len(ids) == len(labels)
    runs, cur = [], []  # the maximal runs of trained tokens, decoded
    for t, lab in zip(ids, labels):
        if lab != -100:
            assert lab == t
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    call = '{"tool_call": {"name": "lookup_order", "arguments": {"order_id": "A-1001"}}}'
    assert runs == ["Sure, what is it?<|im_end|>\n", f"{call}<|im_end|>\n", "It shipped yesterday.<|im_end|>\n"]
    masked = tok.decode([t for t, lab in zip(ids, labels) if lab == -100])
    for text in ("terse assistant", "lookup_order", "Hi, I have a question.", "Where is order A-1001?",
                 '{"status": "shipped"}', "<|im_start|>assistant"):
        assert text in masked  # the function list (system), user turns, tool result and headers are not trained
    assert "Sure, what is it?" not in masked and "It shipped yesterday." not in masked


def test_split_uses_split_column_and_carves_when_missing():
    df = clean_frame(2)
    tr, va, notes = split_dataset(df, VALIDATION_FRACTION)
    assert len(va) == (df["split"] == "validation").sum() and not notes
    tr2, va2, notes2 = split_dataset(df.drop(columns=["split"]), VALIDATION_FRACTION)
    assert len(va2) >= 1 and notes2 and len(tr2) + len(va2) == len(df)
    assert split_dataset(df.drop(columns=["split"]), VALIDATION_FRACTION)[1] == va2  # deterministic


def test_loss_only_on_assistant_tokens(tiny, tmp_path):
    """Build the real SFTTrainer dataset and check every non-assistant label is -100."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from distill_assets.lib.training.lora import build_sft_config, load_student

    plan = tiny_plan()
    tok = AutoTokenizer.from_pretrained(str(tiny["base"]))
    tr, va, _ = split_dataset(clean_frame(1), VALIDATION_FRACTION)
    ds = Dataset.from_list([tokenize_conversation(tok, r["messages"], r["tools"]) for r in tr])
    trainer = SFTTrainer(model=load_student(tiny["base"], plan), args=build_sft_config(plan, tmp_path, eval_strategy="no"),
                         train_dataset=ds, processing_class=tok,
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(tr))])
    for row, (ids, labels) in enumerate(zip(batch["input_ids"].tolist(), batch["labels"].tolist())):
        answer = tr[row]["messages"][-1]["content"]
        prompt_text = tok.apply_chat_template(tr[row]["messages"][:-1], tokenize=False, add_generation_prompt=True)
        prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
        n_prompt = len(prompt_ids)
        assert ids[:n_prompt] == list(prompt_ids)
        assert all(lab == -100 for lab in labels[:n_prompt]), "system/user/header tokens must be masked"
        supervised = [t for t, lab in zip(ids, labels) if lab != -100]
        text = tok.decode(supervised)
        assert text.startswith(answer) and "<|im_end|>" in text  # the model learns to stop
        assert "user" not in text and "terse assistant" not in text
