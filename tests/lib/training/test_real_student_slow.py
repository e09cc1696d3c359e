"""The real embedded student: GGUF -> HF conversion, a few LoRA steps, merge parity (in the default suite)."""

import pytest

from distill_assets.lib.export.merge import merge_adapter, merge_parity
from distill_assets.lib.export.parity import MERGE_MAX_ABS_DIFF
from distill_assets.lib.training.data import split_dataset
from distill_assets.lib.training.lora import train_lora
from distill_assets.lib.training.plan import TrainOptions, resolve_plan
from distill_assets.lib.training.student import resolve_student_base
from tests.lib.training.tiny_model import VALIDATION_FRACTION, clean_frame


@pytest.mark.real_model
def test_real_135m_student_few_steps(tmp_path):
    import json

    base, info = resolve_student_base(None, tmp_path / "art")
    assert info["source"] == "gguf" and 130e6 < info["num_parameters"] < 140e6
    assert (base / "model.safetensors").exists() and (base / "chat_template.jinja").exists()
    assert "quantization_config" not in json.loads((base / "config.json").read_text())
    tr, va, _ = split_dataset(clean_frame(2), VALIDATION_FRACTION)
    plan = resolve_plan(TrainOptions(max_steps=2, max_seq_len=128, effective_batch_size=4, num_threads=2))
    res = train_lora(base, tr, va, plan, tmp_path / "run", base_model_id="smollm2", dataset_version="v")
    assert res.global_step == 2 and res.epochs[-1]["val_loss"] is not None
    merged = tmp_path / "merged"
    merge_adapter(base, res.adapter_dir, merged)
    r = merge_parity(base, res.adapter_dir, merged)
    assert r["max_abs_diff"] <= MERGE_MAX_ABS_DIFF  # ~1.8e-4 measured
