import pytest

from distill_assets.lib.training.plan import LORA_DEFAULTS, TrainOptions, cpu_has_native_bf16, resolve_plan


def test_lora_defaults_on_gpu():
    p = resolve_plan(TrainOptions(), cuda_available=True)
    assert p.profile == "gpu"
    assert (p.lora_r, p.lora_alpha, p.lora_dropout) == (32, 64, 0.05)
    assert p.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert (p.learning_rate, p.lr_scheduler_type, p.warmup_ratio, p.weight_decay) == (2e-4, "cosine", 0.03, 0.01)
    assert (p.num_train_epochs, p.effective_batch_size, p.max_seq_len) == (3.0, 32, 2048)
    assert p.per_device_batch_size * p.gradient_accumulation_steps == 32
    assert (LORA_DEFAULTS["kd_temperature"], LORA_DEFAULTS["kd_alpha"]) == (2.0, 0.5)


def test_auto_picks_cpu_quickstart_and_says_so():
    p = resolve_plan(TrainOptions(), cuda_available=False)
    assert p.profile == "cpu_quickstart" and "no CUDA" in p.profile_reason
    assert p.num_train_epochs == 1.0 and p.max_seq_len <= 512 and p.effective_batch_size < 32
    assert p.lora_r == 32 and p.learning_rate == 2e-4  # the default LoRA shape and optimizer are kept
    assert not p.bf16 and not p.gradient_checkpointing


def test_bf16_is_on_with_cuda_and_opt_in_on_cpus_with_native_bf16():
    assert resolve_plan(TrainOptions(), cuda_available=True, cpu_bf16=False).bf16
    assert not resolve_plan(TrainOptions(), cuda_available=False, cpu_bf16=True).bf16  # CPU default: fp32
    p = resolve_plan(TrainOptions(bf16=True), cuda_available=False, cpu_bf16=True)
    assert p.bf16 and any("bf16 autocast on CPU" in n for n in p.notes)
    with pytest.raises(ValueError, match="native bf16"):
        resolve_plan(TrainOptions(bf16=True), cuda_available=False, cpu_bf16=False)
    assert not resolve_plan(TrainOptions(bf16=False), cuda_available=True).bf16  # override wins


def test_native_bf16_is_read_from_cpu_flags():
    assert cpu_has_native_bf16("flags : fpu sse avx512f avx512_bf16 amx_tile")
    assert cpu_has_native_bf16("flags : fpu amx_bf16")
    assert not cpu_has_native_bf16("flags : fpu sse avx2 avx512f")


def test_overrides_beat_the_profile():
    p = resolve_plan(TrainOptions(num_train_epochs=2, max_seq_len=256, lora_r=8, effective_batch_size=6,
                                 per_device_batch_size=4), cuda_available=False)
    assert (p.num_train_epochs, p.max_seq_len, p.lora_r) == (2.0, 256, 8)
    assert p.effective_batch_size == 8 and p.gradient_accumulation_steps == 2 and p.notes  # rounded up, noted


def test_qlora_needs_cuda():
    cpu = resolve_plan(TrainOptions(use_qlora=True), cuda_available=False)
    assert not cpu.use_qlora and cpu.qlora_status.startswith("skipped: needs CUDA")
    gpu = resolve_plan(TrainOptions(use_qlora=True), cuda_available=True)
    assert gpu.use_qlora and (gpu.bnb_4bit_quant_type, gpu.bnb_4bit_use_double_quant,
                              gpu.bnb_4bit_compute_dtype) == ("nf4", True, "bfloat16")


def test_kd_validation():
    with pytest.raises(ValueError, match="teacher_model_path"):
        resolve_plan(TrainOptions(mode="logit_kd"), cuda_available=False)
    with pytest.raises(ValueError, match="kd_alpha"):
        resolve_plan(TrainOptions(mode="logit_kd", teacher_model_path="/x", kd_alpha=1.5), cuda_available=False)
    with pytest.raises(RuntimeError, match="CUDA"):
        resolve_plan(TrainOptions(profile="gpu"), cuda_available=False)


def test_fingerprint_ignores_resume_and_threads():
    a = resolve_plan(TrainOptions(num_threads=1), cuda_available=False)
    b = resolve_plan(TrainOptions(num_threads=2, resume=False), cuda_available=False)
    c = resolve_plan(TrainOptions(lora_r=8), cuda_available=False)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
