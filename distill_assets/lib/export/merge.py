"""LoRA merged into the base (peft merge_and_unload), saved as safetensors + tokenizer + template.

Inference is tested after each conversion step: the merge parity check (checks/merged_model.py) compares merged
logits with base+adapter logits on the fixed parity prompts in fp32.
"""

import json
from pathlib import Path

# Fixed prompts for every parity check (merge, GGUF): chat-formatted and plain text, short enough for CPU.
PARITY_CHATS = [
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "What is the capital of France? Answer in one word."},
     {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "Write a Python function that adds two numbers."},
     {"role": "assistant", "content": "def add(a, b):\n    return a + b"}],
    [{"role": "user", "content": "Classify the sentiment: 'I love this product, it works great!'"},
     {"role": "assistant", "content": "positive"}],
    [{"role": "user", "content": "If a train travels 60 km in 1.5 hours, what is its average speed?"},
     {"role": "assistant", "content": "60 / 1.5 = 40, so the average speed is 40 km/h."}],
]
PARITY_GEN_CHAT = [{"role": "user", "content": "What is the capital of France?"}]  # the greedy sample shown
PARITY_TEXTS = ["The quick brown fox jumps over the lazy dog, and then it runs back into the forest."]


def parity_texts(tokenizer) -> list[str]:
    texts = []
    if tokenizer.chat_template:
        texts += [tokenizer.apply_chat_template(c, tokenize=False) for c in PARITY_CHATS]
    return texts + list(PARITY_TEXTS)


def parity_token_ids(tokenizer) -> list[list[int]]:
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in parity_texts(tokenizer)]


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> dict:
    """Merge in fp32 (merging into a low-precision base rounds the LoRA delta away)."""
    import torch  # deferred: heavy optional dependency
    from peft import PeftModel  # deferred: heavy optional dependency
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: heavy optional dependency

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    merged = model.merge_and_unload()
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(str(adapter_dir))
    tok.save_pretrained(str(out_dir))
    if not tok.chat_template:
        raise RuntimeError(f"adapter tokenizer at {adapter_dir} has no chat template")
    info = {"base_model_path": str(base_dir), "adapter_path": str(adapter_dir), "dtype": "float32",
            "num_parameters": int(sum(p.numel() for p in merged.parameters()))}
    (Path(out_dir) / "distill_merge.json").write_text(json.dumps(info, indent=2))
    return info


def merge_parity(base_dir: str | Path, adapter_dir: str | Path, merged_dir: str | Path) -> dict:
    """Max |logit difference| between base+adapter (unmerged) and the merged model, fp32, on the fixed prompts."""
    import torch  # deferred: heavy optional dependency
    from peft import PeftModel  # deferred: heavy optional dependency
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: heavy optional dependency

    tok = AutoTokenizer.from_pretrained(str(merged_dir))
    ids = parity_token_ids(tok)
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        ref = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
        ref_logits = [ref(torch.tensor([x])).logits[0] for x in ids]
        del ref, base
        merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
        diffs = [float((merged(torch.tensor([x])).logits[0] - r).abs().max()) for x, r in zip(ids, ref_logits)]
        top1 = [float((merged(torch.tensor([x])).logits[0].argmax(-1) == r.argmax(-1)).float().mean())
                for x, r in zip(ids, ref_logits)]
    return {"max_abs_diff": max(diffs), "per_prompt_max_abs_diff": diffs, "top1_agreement": min(top1),
            "prompts": len(ids), "tokens": sum(len(x) for x in ids)}
