"""A tiny random-init Llama (2 layers, hidden 64) with the real SmolLM2 tokenizer and chat template, for fast tests."""

from __future__ import annotations

import json
from pathlib import Path

SYSTEM = "You are a terse assistant."
PAIRS = [
    ("What is the capital of France?", "Paris."),
    ("Add 2 and 3.", "5"),
    ("Say hello.", "Hello!"),
    ("Name a primary color.", "Red."),
    ("What is 10 minus 4?", "6"),
    ("Spell cat backwards.", "tac"),
]
VALIDATION_FRACTION = 0.1  # the task file default
PROMPTS = ["<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
           "The quick brown fox jumps over the lazy dog. " * 3,
           "def add(a, b):\n    return a + b\n"]


def save_tokenizer(out: Path) -> Path:
    from distill_assets.lib.settings import embedded_teacher_gguf
    from distill_assets.lib.tokenizer import gguf_tokenizer

    gguf_tokenizer(embedded_teacher_gguf(), out)
    return out


def make_tiny_model(out: Path, tokenizer_dir: Path, seed: int = 0, layers: int = 2, hidden: int = 64) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, rms_norm_eps=1e-5, initializer_range=0.2,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def conversations(n_repeat: int = 4) -> list[str]:
    msgs = []
    for _ in range(n_repeat):
        for q, a in PAIRS:
            msgs.append(json.dumps([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                                    {"role": "assistant", "content": a}]))
    return msgs


def clean_frame(n_repeat: int = 4, categories=("classify", "code", "math", "support")):
    import pandas as pd

    from distill_assets.lib.ids import content_hash

    rows = []
    for i, m in enumerate(conversations(n_repeat)):
        cat = categories[i % len(categories)]
        split = "validation" if i % 6 == 0 else "train"
        eid = "e_" + content_hash(m, i)
        rows.append({"example_id": eid, "category": cat, "messages": m, "split": split, "seed_id": "s_" + eid[2:],
                     "method": "response", "difficulty": "easy", "source": "seed", "generation_id": eid})
    return pd.DataFrame(rows)


def _cached(root: Path, name: str, build) -> Path:
    """Build once per pytest session (shared by tests/training and tests/export)."""
    from distill_assets.lib.artifacts import atomic_dir, is_complete

    out = root / name
    if not is_complete(out):
        with atomic_dir(out) as tmp:
            build(tmp)
    return out


def session_dirs(tmp_path_factory) -> dict:
    root = tmp_path_factory.getbasetemp() / "tiny_shared"
    root.mkdir(exist_ok=True)
    tok = _cached(root, "tokenizer", save_tokenizer)
    base = _cached(root, "base", lambda d: make_tiny_model(d, tok, seed=0))
    return {"root": root, "tokenizer": tok, "base": base}


def tiny_plan(**kw):
    from distill_assets.lib.training.plan import TrainOptions, resolve_plan

    args = dict(num_train_epochs=3, effective_batch_size=4, per_device_batch_size=4, learning_rate=5e-3,
                max_seq_len=128, lora_r=8, lora_alpha=16, num_threads=2, save_steps=1000, profile="full")
    args.update(kw)
    return resolve_plan(TrainOptions(**args), cuda_available=False)


def trained_adapter(tmp_path_factory) -> Path:
    """Base + adapter trained for 3 epochs on the repeated toy set (shared across test modules)."""
    from distill_assets.lib.training.data import split_dataset
    from distill_assets.lib.training.lora import train_lora

    d = session_dirs(tmp_path_factory)
    run = d["root"] / "run"
    if not (run / "adapter" / ".complete").exists():
        tr, va, _ = split_dataset(clean_frame(4), VALIDATION_FRACTION)
        train_lora(d["base"], tr, va, tiny_plan(), run, base_model_id="tiny", dataset_version="v-test")
    return run / "adapter"


TINY_AWQ = dict(calibration_samples=4, seq_len=64, batch_size=2, n_grid=3)  # ~3 s on 2 cores
# The random-init tiny model's logits are near-uniform, so 4-bit noise flips many argmaxes: its AWQ export gets
# top-1 ~0.29 and a broken one 0.0 (the real 135M is held to lib/export/parity.py's AWQ_THRESHOLDS).
TINY_AWQ_BAR = {"min_top1": 0.2}


def tiny_awq(tmp_path_factory) -> Path:
    """The tiny base quantized by the real llm-compressor AWQ recipe (W4A16, group 64), once per session."""
    from transformers import AutoTokenizer

    from distill_assets.lib.export.awq import AWQSettings, awq_quantize, calibration_texts

    d = session_dirs(tmp_path_factory)
    texts = calibration_texts(clean_frame(4), AutoTokenizer.from_pretrained(str(d["base"])))
    return _cached(d["root"], "awq", lambda out: awq_quantize(d["base"], out, texts, AWQSettings(**TINY_AWQ)))
