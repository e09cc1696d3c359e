import json

import pytest

from distill_assets.lib.errors import InputError
from distill_assets.lib.training.data import conversation_to_prompt_completion, split_dataset
from tests.lib.training.tiny_model import VALIDATION_FRACTION, clean_frame, tiny_plan


def test_prompt_completion_split():
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"}]
    pc = conversation_to_prompt_completion(json.dumps(msgs))
    assert [m["role"] for m in pc["prompt"]] == ["system", "user"]
    assert pc["completion"] == [{"role": "assistant", "content": "A"}]


@pytest.mark.parametrize("bad, why", [
    ("not json", "JSON"),
    (json.dumps([{"role": "user", "content": "Q"}]), "last message"),
    (json.dumps([{"role": "user", "content": "Q"}, {"role": "assistant", "content": " "}]), "empty"),
    (json.dumps([{"role": "assistant", "content": "A"}]), "no user"),
])
def test_bad_conversations(bad, why):
    with pytest.raises(InputError, match=why):
        conversation_to_prompt_completion(bad)


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
    ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in tr])
    trainer = SFTTrainer(model=load_student(tiny["base"], plan), args=build_sft_config(plan, tmp_path, eval_strategy="no"),
                         train_dataset=ds, processing_class=tok,
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(tr))])
    for row, (ids, labels) in enumerate(zip(batch["input_ids"].tolist(), batch["labels"].tolist())):
        answer = tr[row]["completion"][0]["content"]
        prompt_text = tok.apply_chat_template(tr[row]["prompt"], tokenize=False, add_generation_prompt=True)
        prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
        n_prompt = len(prompt_ids)
        assert ids[:n_prompt] == list(prompt_ids)
        assert all(lab == -100 for lab in labels[:n_prompt]), "system/user/header tokens must be masked"
        supervised = [t for t, lab in zip(ids, labels) if lab != -100]
        text = tok.decode(supervised)
        assert text.startswith(answer) and "<|im_end|>" in text  # the model learns to stop
        assert "user" not in text and "terse assistant" not in text
