"""`awq_export`: AWQ of the merged model through llm-compressor, W4A16 asymmetric, written as compressed-tensors.

The recipe is llm-compressor's `oneshot` with `AWQModifier` (activation-aware scales, grid-searched per mapping)
followed by a `QuantizationModifier`: 4-bit integer weights with a zero point (asymmetric), one scale per
group of input features, 16-bit activations, every Linear except `lm_head`. The group size is the largest of
128/64/32 that divides every quantized Linear's in_features (SmolLM2-135M: hidden 576 = 9 x 64, so 64).
Calibration runs on the task's own training conversations (chat template applied), packed into equal-length
blocks, which also keeps it offline. The output is a compressed-tensors `pack-quantized` folder: vLLM serves
it as is (`vllm serve <dir>`; it reads the quantization from config.json), and transformers loads it on CPU
by decompressing the weights (the awq variant of eval_report and the awq_parity check).

Needs the `awq` extra (llmcompressor, compressed-tensors); runs on CPU. llm-compressor pins transformers
(5.15-5.17), which is why it is an extra: `pip install -e '.[awq]'` (scripts/setup.sh installs it).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from distill_assets.lib.export.merge import PARITY_GEN_CHAT, parity_texts
from distill_assets.lib.export.parity import hf_logits, parity_metrics

GROUP_SIZES = (128, 64, 32)
IGNORE = ("lm_head",)
FORMAT = "pack-quantized"


@dataclass(frozen=True)
class AWQSettings:
    calibration_samples: int = 64  # packed blocks of `seq_len` tokens
    seq_len: int = 512
    batch_size: int = 8
    n_grid: int = 20  # AWQ's grid of scale exponents per mapping (llm-compressor's default)
    duo_scaling: bool = True  # scales from activations and weights (AWQ paper: activations only)
    weight_observer: str = "memoryless_minmax"  # or "memoryless_mse": per-group clipping searched on the weights


def awq_unavailable() -> str | None:
    """Why the AWQ export cannot run here ("skipped: ..."), or None. CPU is enough."""
    missing = [m for m in ("llmcompressor", "compressed_tensors") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"skipped: needs the awq extra ({', '.join(missing)} not installed; "
                "pip install -e '.[awq]' or scripts/setup.sh)")
    return None


def vllm_command(model_dir: str | Path, max_model_len: int = 4096) -> str:
    # compressed-tensors: vLLM reads the scheme from config.json, so no --quantization flag
    return f"vllm serve {model_dir} --max-model-len {max_model_len} --port 8000"


def quantized_in_features(model, ignore: tuple[str, ...] = IGNORE) -> dict[str, int]:
    """{module name: in_features} of every Linear the recipe quantizes (all but `ignore`)."""
    import torch  # deferred: heavy optional dependency

    return {name: m.in_features for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and name.split(".")[-1] not in ignore}


def choose_group_size(in_features: Mapping[str, int], candidates: tuple[int, ...] = GROUP_SIZES) -> int:
    """The largest candidate that divides every quantized in_features; a ValueError naming the layers otherwise."""
    if not in_features:
        raise ValueError("AWQ: the model has no Linear layer to quantize")
    for g in sorted(candidates, reverse=True):
        if all(n % g == 0 for n in in_features.values()):
            return g
    widths = sorted(set(in_features.values()))
    worst = next(n for n in widths if all(n % g for g in candidates))
    layers = [k for k, v in in_features.items() if v == worst][:3]
    raise ValueError(f"AWQ: no group size in {list(candidates)} divides every quantized in_features "
                     f"(widths {widths}; e.g. {layers} have {worst}); this model cannot be exported as W4A16 "
                     "with group quantization")


def quant_config(group_size: int, settings: AWQSettings) -> dict:
    """What metadata and the artifact row record about the recipe."""
    return {"method": "awq (llm-compressor)", "scheme": "W4A16", "num_bits": 4, "symmetric": False,
            "strategy": "group", "group_size": group_size, "ignore": list(IGNORE), "format": FORMAT,
            **asdict(settings)}


def calibration_texts(df: pd.DataFrame, tokenizer, n: int | None = None) -> list[str]:
    """The training conversations of clean_dataset, chat template applied, in example_id order."""
    rows = df[df["split"] == "train"] if "split" in df.columns else df
    rows = rows.sort_values("example_id")
    if n is not None:
        rows = rows.head(n)
    return [tokenizer.apply_chat_template(json.loads(m), tokenize=False) for m in rows["messages"]]


def pack_blocks(token_ids: list[list[int]], seq_len: int, n_blocks: int) -> list[list[int]]:
    """Concatenate and cut into `n_blocks` blocks of `seq_len` tokens (no padding, no truncation within a
    batch); with fewer tokens than one block, the one short block there is."""
    flat = [t for ids in token_ids for t in ids]
    blocks = [flat[i:i + seq_len] for i in range(0, len(flat) - seq_len + 1, seq_len)][:n_blocks]
    return blocks or ([flat] if flat else [])


def install_cpu_pin_memory_shim() -> bool:
    """Skip llm-compressor's pinning of cached activations when no accelerator is present.

    Upstream bug (llmcompressor 0.14, llmcompressor/pipelines/cache.py): `IntermediatesCache.pin_memory`, called
    by `AWQModifier._apply_smoothing` (llmcompressor/modifiers/transform/awq/base.py), pins every cached CPU
    tensor unconditionally, and pinning needs an accelerator: on a CPU-only machine it raises "Cannot access
    accelerator device when none is available". Pinning only speeds host-to-device copies, so without a device
    it is a no-op. tests/lib/export/test_awq.py fails once upstream stops raising, so this can be removed.
    Returns True when the shim is (now) in place."""
    import torch  # deferred: heavy optional dependency
    from llmcompressor.pipelines.cache import IntermediatesCache  # deferred: heavy optional dependency

    if getattr(IntermediatesCache.pin_memory, "_distill_cpu_shim", False):
        return True
    upstream = IntermediatesCache.pin_memory

    def pin_memory(self, batch_index, input_names=None):
        if not torch.accelerator.is_available():
            return None
        return upstream(self, batch_index, input_names)

    pin_memory._distill_cpu_shim = True
    pin_memory.upstream = upstream
    IntermediatesCache.pin_memory = pin_memory
    return True


def build_recipe(group_size: int, settings: AWQSettings) -> list:
    from compressed_tensors.quantization import (  # deferred: heavy optional dependency
        QuantizationArgs,
        QuantizationScheme,
        QuantizationStrategy,
        QuantizationType,
    )
    from llmcompressor.modifiers.quantization import QuantizationModifier  # deferred: heavy optional dependency
    from llmcompressor.modifiers.transform.awq import AWQModifier  # deferred: heavy optional dependency

    weights = QuantizationArgs(num_bits=4, type=QuantizationType.INT, strategy=QuantizationStrategy.GROUP,
                               group_size=group_size, symmetric=False, dynamic=False,
                               observer=settings.weight_observer)
    scheme = QuantizationScheme(targets=["Linear"], weights=weights)
    return [AWQModifier(n_grid=settings.n_grid, duo_scaling=settings.duo_scaling),
            QuantizationModifier(config_groups={"group_0": scheme}, ignore=list(IGNORE))]


def awq_quantize(merged_dir: str | Path, out_dir: str | Path, calib_texts: list[str],
                 settings: AWQSettings = AWQSettings()) -> dict:
    """Calibrate, quantize and save the merged model as compressed-tensors W4A16 into `out_dir` (write it
    through lib/artifacts.atomic_dir). Returns the recipe record."""
    import torch  # deferred: heavy optional dependency
    from datasets import Dataset  # deferred: heavy optional dependency
    from llmcompressor import oneshot  # deferred: heavy optional dependency
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: heavy optional dependency

    if not calib_texts:
        raise ValueError("AWQ: no calibration text (clean_dataset has no training rows)")
    install_cpu_pin_memory_shim()
    tok = AutoTokenizer.from_pretrained(str(merged_dir))
    model = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32)
    group = choose_group_size(quantized_in_features(model))
    ids, need = [], settings.calibration_samples * settings.seq_len
    for t in calib_texts:  # only as many conversations as the blocks need
        ids.append(tok(t, add_special_tokens=False)["input_ids"])
        need -= len(ids[-1])
        if need <= 0:
            break
    blocks = pack_blocks(ids, settings.seq_len, settings.calibration_samples)
    data = Dataset.from_dict({"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks]})
    oneshot(model=model, tokenizer=tok, dataset=data, recipe=build_recipe(group, settings),
            num_calibration_samples=len(blocks), max_seq_length=settings.seq_len,
            batch_size=min(settings.batch_size, len(blocks)), shuffle_calibration_samples=False)
    model.save_pretrained(str(out_dir), save_compressed=True)
    tok.save_pretrained(str(out_dir))
    qc = json.loads((Path(out_dir) / "config.json").read_text()).get("quantization_config") or {}
    if qc.get("format") != FORMAT:
        raise RuntimeError(f"AWQ: llm-compressor wrote format {qc.get('format')!r}, expected {FORMAT!r}")
    info = {"quant_config": quant_config(group, settings), "calibration_blocks": len(blocks),
            "calibration_tokens": sum(len(b) for b in blocks), "calibration_conversations": len(ids),
            "merged_dir": str(merged_dir)}
    (Path(out_dir) / "distill_awq.json").write_text(json.dumps(info, indent=2))
    return info


def awq_parity_report(merged_dir: str | Path, awq_dir: str | Path, name: str = "w4a16") -> dict:
    """{name: metrics} of the AWQ folder (decompressed in transformers) vs the merged model, teacher-forced on
    the fixed parity prompts: top-1 agreement, perplexity ratio, tokenizer agreement, a greedy sample."""
    import torch  # deferred: heavy optional dependency
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: heavy optional dependency

    tok = AutoTokenizer.from_pretrained(str(merged_dir))
    texts = parity_texts(tok)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    ref = hf_logits(merged_dir, ids)
    awq_tok = AutoTokenizer.from_pretrained(str(awq_dir))
    model = AutoModelForCausalLM.from_pretrained(str(awq_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        test = [model(torch.tensor([x])).logits[0].float().numpy() for x in ids]
        m = parity_metrics(ref, test, ids)
        m["tokenizer_match"] = sum(awq_tok(t, add_special_tokens=False)["input_ids"] == x
                                   for t, x in zip(texts, ids)) / len(ids)
        prompt = tok.apply_chat_template(PARITY_GEN_CHAT, tokenize=False, add_generation_prompt=True)
        enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        m["generation"] = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return {name: m}
