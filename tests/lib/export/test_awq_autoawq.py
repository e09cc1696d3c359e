from distill_assets.lib.export.awq_autoawq import AWQ_QUANT_CONFIG, awq_availability, vllm_command


def test_awq_config_and_command():
    assert AWQ_QUANT_CONFIG["w_bit"] == 4 and AWQ_QUANT_CONFIG["version"] == "GEMM"
    assert "--quantization awq" in vllm_command("/m")


def test_awq_skips_without_cuda():
    import torch

    ok, status = awq_availability()
    if not torch.cuda.is_available():
        assert not ok and status == "skipped: needs CUDA"
