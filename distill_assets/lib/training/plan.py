"""Training settings: the LoRA/QLoRA distillation defaults live here and only here.

`TrainOptions` holds every setting a run may override (the Dagster run config of `lora_adapter` is built on
it). The fields a profile changes (epochs, sequence length, batch) default to `None`, meaning "whatever the
profile says", so an explicit override always beats the profile. `resolve_plan()` turns options plus the
hardware into a `TrainPlan`, the flat, fully-resolved settings that the pure training function takes and that
are saved with the adapter.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

# Recommended LoRA/QLoRA distillation defaults: r 32 / alpha 64 on every attention and MLP projection, cosine
# schedule at 2e-4 with 3% warmup, 3 epochs at an effective batch of 32 and sequences up to 2048 tokens.
LORA_DEFAULTS: dict = {
    "lora_r": 32,
    "lora_alpha": 64,
    "lora_dropout": 0.05,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "learning_rate": 2e-4,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.03,
    "weight_decay": 0.01,
    "num_train_epochs": 3.0,
    "effective_batch_size": 32,
    "per_device_batch_size": 4,
    "max_seq_len": 2048,
    # QLoRA specifics
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_compute_dtype": "bfloat16",
    # logit KD: temperature 2.0-4.0 and alpha 0.5 are the common choices
    "kd_temperature": 2.0,
    "kd_alpha": 0.5,
    "kd_divergence": "forward",
}

# What a profile changes relative to LORA_DEFAULTS. The CPU quickstart keeps the optimizer, schedule and LoRA
# shape and only shrinks the work: one epoch, short sequences, a small effective batch.
PROFILES: dict[str, dict] = {
    "full": {},
    "gpu": {},
    "cpu_quickstart": {
        "num_train_epochs": 1.0,
        "max_seq_len": 512,
        "effective_batch_size": 8,
        "per_device_batch_size": 4,
    },
}

Profile = Literal["auto", "cpu_quickstart", "gpu", "full"]


class TrainOptions(BaseModel):
    """Every overridable training setting (the run config of `lora_adapter` is exactly these fields)."""

    profile: Profile = Field(
        default="auto",
        description="auto: gpu when CUDA is available, else cpu_quickstart. full: LORA_DEFAULTS on any device.",
    )
    mode: Literal["sft", "logit_kd", "sparse_kd"] = Field(
        default="sft", description="sft; logit_kd against a local teacher's weights; sparse_kd against the teacher "
                                   "top-k logprobs stored with the generations (generation.logprobs)")
    use_qlora: bool = Field(default=False, description="4-bit nf4 base (bitsandbytes); needs CUDA")

    lora_r: int = LORA_DEFAULTS["lora_r"]
    lora_alpha: int = LORA_DEFAULTS["lora_alpha"]
    lora_dropout: float = LORA_DEFAULTS["lora_dropout"]
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_DEFAULTS["target_modules"]))
    learning_rate: float = LORA_DEFAULTS["learning_rate"]
    lr_scheduler_type: str = LORA_DEFAULTS["lr_scheduler_type"]
    warmup_ratio: float = LORA_DEFAULTS["warmup_ratio"]
    weight_decay: float = LORA_DEFAULTS["weight_decay"]

    # None = from the profile
    num_train_epochs: float | None = None
    effective_batch_size: int | None = None
    per_device_batch_size: int | None = None
    max_seq_len: int | None = None
    max_steps: int = Field(default=-1, description="> 0 caps optimizer steps (smoke runs); -1 = use epochs")

    kd_temperature: float = LORA_DEFAULTS["kd_temperature"]
    kd_alpha: float = LORA_DEFAULTS["kd_alpha"]
    kd_divergence: Literal["forward", "reverse"] = LORA_DEFAULTS["kd_divergence"]
    teacher_model_path: str | None = Field(
        default=None, description="local HF folder of the teacher for logit_kd (must share the student tokenizer)"
    )

    seed: int = 42
    save_steps: int = Field(default=50, description="checkpoint every N optimizer steps (crash recovery)")
    gradient_checkpointing: bool | None = Field(default=None, description="None: on for gpu/full, off on CPU")
    num_threads: int | None = Field(default=None, description="torch CPU threads; None = torch default")
    bf16: bool | None = Field(
        default=None, description="bf16 autocast; None: on with CUDA only. True on CPU needs native bf16 (AVX512-BF16/AMX)"
    )
    resume: bool = Field(default=True, description="resume from the last checkpoint of an interrupted run")


@dataclass
class TrainPlan:
    """Fully resolved training settings (what actually runs), saved as training_config.json with the adapter."""

    profile: str
    profile_reason: str
    device: str
    mode: str
    use_qlora: bool
    qlora_status: str
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    target_modules: list[str]
    learning_rate: float
    lr_scheduler_type: str
    warmup_ratio: float
    weight_decay: float
    num_train_epochs: float
    effective_batch_size: int
    per_device_batch_size: int
    gradient_accumulation_steps: int
    max_seq_len: int
    max_steps: int
    kd_temperature: float
    kd_alpha: float
    kd_divergence: str
    teacher_model_path: str | None
    seed: int
    save_steps: int
    gradient_checkpointing: bool
    bf16: bool
    num_threads: int | None
    resume: bool
    bnb_4bit_quant_type: str = LORA_DEFAULTS["bnb_4bit_quant_type"]
    bnb_4bit_use_double_quant: bool = LORA_DEFAULTS["bnb_4bit_use_double_quant"]
    bnb_4bit_compute_dtype: str = LORA_DEFAULTS["bnb_4bit_compute_dtype"]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> str:
        """Hash of what changes the trained weights (not resume/threads/save cadence)."""
        d = self.to_dict()
        for k in ("resume", "num_threads", "save_steps", "notes", "profile_reason", "qlora_status"):
            d.pop(k, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU computes bf16 in hardware; emulated bf16 autocast on older CPUs is slower than fp32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def resolve_plan(
    cfg: TrainOptions | None = None, *, cuda_available: bool | None = None, cpu_bf16: bool | None = None
) -> TrainPlan:
    """`cfg` is a TrainOptions or anything with its fields (the `lora_adapter` run config).

    `cpu_bf16` says whether the CPU has native bf16 (None: read /proc/cpuinfo); it is checked when bf16 is
    asked for on CPU."""
    cfg = cfg or TrainOptions()
    if cuda_available is None:
        import torch  # deferred: heavy optional dependency

        cuda_available = torch.cuda.is_available()
    notes: list[str] = []

    if cfg.profile == "auto":
        profile = "gpu" if cuda_available else "cpu_quickstart"
        reason = ("auto: CUDA available -> gpu profile (LORA_DEFAULTS)" if cuda_available else
                  "auto: no CUDA -> cpu_quickstart profile (1 epoch, short sequences, small effective batch)")
    else:
        profile = cfg.profile
        reason = f"profile {profile!r} requested"
        if profile == "gpu" and not cuda_available:
            raise RuntimeError("profile 'gpu' requested but CUDA is not available; use profile 'auto' or 'full'")
    prof = {**{k: LORA_DEFAULTS[k] for k in ("num_train_epochs", "effective_batch_size", "per_device_batch_size",
                                            "max_seq_len")}, **PROFILES[profile]}

    def pick(name: str):
        v = getattr(cfg, name)
        return prof[name] if v is None else v

    eff = int(pick("effective_batch_size"))
    per_dev = max(1, min(int(pick("per_device_batch_size")), eff))
    if eff % per_dev:
        notes.append(f"effective batch {eff} is not a multiple of per-device {per_dev}; rounded up")
    accum = max(1, -(-eff // per_dev))

    if cfg.use_qlora and cuda_available:
        use_qlora, qlora_status = True, "enabled: nf4, double quant, bf16 compute"
    elif cfg.use_qlora:
        use_qlora, qlora_status = False, "skipped: needs CUDA (bitsandbytes 4-bit); trained plain LoRA in fp32"
        notes.append(qlora_status)
    else:
        use_qlora, qlora_status = False, "not requested"

    if cfg.mode == "logit_kd" and not cfg.teacher_model_path:
        raise ValueError("mode 'logit_kd' needs teacher_model_path: a local HF folder sharing the student tokenizer")
    if cfg.mode == "sparse_kd":
        notes.append("sparse_kd: KL over the teacher's top-k ids plus one tail bucket at temperature 1 (the logprobs "
                     "servers return); kd_temperature does not apply")
    if not 0.0 <= cfg.kd_alpha <= 1.0:
        raise ValueError(f"kd_alpha must be in [0, 1], got {cfg.kd_alpha}")
    if cfg.kd_temperature <= 0:
        raise ValueError(f"kd_temperature must be > 0, got {cfg.kd_temperature}")

    # CPU bf16 is opt-in: on the 135M demo it saved ~7% of training time, and that run's merged model missed
    # the q8_0 GGUF perplexity-parity bound (1.058 > 1.05), so fp32 stays the CPU default
    bf16 = bool(cuda_available) if cfg.bf16 is None else cfg.bf16
    if bf16 and not cuda_available:
        if not (cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16):
            raise ValueError("bf16 on CPU needs native bf16 (AVX512-BF16 or AMX); this CPU would emulate it, "
                             "slower than fp32. Leave bf16 unset.")
        notes.append("bf16 autocast on CPU (native bf16); weights and optimizer state stay fp32")
    gc = cfg.gradient_checkpointing
    if gc is None:
        gc = bool(cuda_available and profile != "cpu_quickstart")
    return TrainPlan(
        profile=profile,
        profile_reason=reason,
        device="cuda" if cuda_available else "cpu",
        mode=cfg.mode,
        use_qlora=use_qlora,
        qlora_status=qlora_status,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_ratio=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        num_train_epochs=float(pick("num_train_epochs")),
        effective_batch_size=per_dev * accum,
        per_device_batch_size=per_dev,
        gradient_accumulation_steps=accum,
        max_seq_len=int(pick("max_seq_len")),
        max_steps=cfg.max_steps,
        kd_temperature=cfg.kd_temperature,
        kd_alpha=cfg.kd_alpha,
        kd_divergence=cfg.kd_divergence,
        teacher_model_path=cfg.teacher_model_path,
        seed=cfg.seed,
        save_steps=cfg.save_steps,
        gradient_checkpointing=gc,
        bf16=bf16,
        num_threads=cfg.num_threads,
        resume=cfg.resume,
        notes=notes,
    )
