"""AWQ through llm-compressor on CPU: group size from the shapes, the pin_memory shim and the upstream bug it
works around, the W4A16 export of the tiny model, and its parity verdict."""

import json

import pytest

from distill_assets.lib.export import awq
from distill_assets.lib.export.parity import AWQ_THRESHOLDS, evaluate_parity_report
from tests.lib.training.tiny_model import TINY_AWQ_BAR, tiny_awq

pytest.importorskip("llmcompressor", reason="the awq extra is not installed")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny):
    return tiny["base"], tiny_awq(tmp_path_factory)


def test_group_size_is_the_largest_that_divides_every_in_feature():
    smollm2_135m = {"q_proj": 576, "k_proj": 576, "v_proj": 576, "o_proj": 576, "gate_proj": 576, "up_proj": 576,
                    "down_proj": 1536}
    assert awq.choose_group_size(smollm2_135m) == 64  # 576 = 9 x 64
    assert awq.choose_group_size({"q_proj": 4096, "down_proj": 11008}) == 128  # 11008 = 86 x 128
    assert awq.choose_group_size({"q_proj": 96, "down_proj": 288}) == 32


def test_no_dividing_group_size_is_a_clear_error():
    with pytest.raises(ValueError) as e:
        awq.choose_group_size({"model.layers.0.self_attn.q_proj": 576, "model.layers.0.mlp.down_proj": 1000})
    msg = str(e.value)
    assert "[128, 64, 32]" in msg and "model.layers.0.mlp.down_proj" in msg and "1000" in msg
    with pytest.raises(ValueError, match="no Linear"):
        awq.choose_group_size({})


def test_quantized_layers_leave_lm_head_out(tiny):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny["base"]), dtype=torch.float32)
    feats = awq.quantized_in_features(model)
    assert "lm_head" not in feats and len(feats) == 2 * 7  # q k v o gate up down per layer
    assert awq.choose_group_size(feats) == 64  # hidden 64, intermediate 128


def _cpu_cache():
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache, IntermediateValue

    return IntermediatesCache([{"x": IntermediateValue(torch.zeros(3), torch.device("cpu"))}], offload_device=None)


def test_upstream_pin_memory_still_raises_without_an_accelerator():
    """When this fails, llm-compressor pins only where it can: delete install_cpu_pin_memory_shim."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.accelerator.is_available():
        pytest.skip("the bug shows only on a machine without an accelerator")
    awq.install_cpu_pin_memory_shim()
    upstream = getattr(IntermediatesCache.pin_memory, "upstream", IntermediatesCache.pin_memory)
    with pytest.raises(RuntimeError, match="accelerator"):
        upstream(_cpu_cache(), 0)


def test_shim_skips_pinning_only_without_an_accelerator():
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    assert awq.install_cpu_pin_memory_shim() and awq.install_cpu_pin_memory_shim()  # idempotent
    assert IntermediatesCache.pin_memory.upstream.__qualname__ == "IntermediatesCache.pin_memory"
    cache = _cpu_cache()
    cache.pin_memory(0)
    assert cache.fetch(0)["x"].is_pinned() == torch.accelerator.is_available()


def test_pack_blocks_are_equal_length_without_padding():
    assert awq.pack_blocks([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=4, n_blocks=5) == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert awq.pack_blocks([[1, 2]], seq_len=4, n_blocks=2) == [[1, 2]]  # too short: the one block there is
    assert awq.pack_blocks([[1, 2, 3, 4, 5, 6, 7, 8]], seq_len=2, n_blocks=2) == [[1, 2], [3, 4]]


def test_export_is_compressed_tensors_w4a16_pack_quantized(exported):
    _, out = exported
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    weights = qc["config_groups"]["group_0"]["weights"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    assert (weights["num_bits"], weights["group_size"], weights["symmetric"]) == (4, 64, False)
    assert qc["ignore"] == ["lm_head"]
    info = json.loads((out / "distill_awq.json").read_text())
    assert info["quant_config"]["group_size"] == 64 and info["calibration_blocks"] == 4
    assert (out / "tokenizer.json").exists() and awq.vllm_command(out).startswith(f"vllm serve {out}")


def test_parity_passes_on_the_export_and_fails_on_a_corrupted_one(exported, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    base, out = exported
    report = awq.awq_parity_report(base, out)
    m = report["w4a16"]
    assert m["finite"] and m["tokenizer_match"] == 1.0 and isinstance(m["generation"], str)
    # random-init 64-wide model: near-uniform logits (perplexity ~2e5), whose argmax 4-bit noise flips often
    # (measured top-1 0.29; the GGUF test's q4_k_m falls back to 5 bits at this width). A broken export gets 0.
    ok, rows = evaluate_parity_report(report, {"w4a16": {**AWQ_THRESHOLDS["w4a16"], **TINY_AWQ_BAR}})
    assert ok, rows

    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    (st,) = bad.glob("*.safetensors")
    tensors = load_file(str(st))
    key = next(k for k in tensors if k.endswith("embed_tokens.weight"))
    tensors[key] = tensors[key][torch.randperm(tensors[key].shape[0], generator=torch.Generator().manual_seed(0))]
    save_file(tensors, str(st), metadata={"format": "pt"})  # plausible numbers, wrong rows
    ok, rows = evaluate_parity_report(awq.awq_parity_report(base, bad), AWQ_THRESHOLDS)
    assert not ok and "top-1" in rows[0]["why"]


def test_unavailable_names_the_extra(monkeypatch):
    import importlib.util

    assert awq.awq_unavailable() is None
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llmcompressor" else real(name))
    reason = awq.awq_unavailable()
    assert reason.startswith("skipped: needs the awq extra") and "llmcompressor" in reason
