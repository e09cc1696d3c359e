"""The HF (safetensors) student that LoRA trains on.

The student base spec may be a local HF folder, a local .gguf file, or a hub id. Unset, the packaged
SmolLM2-135M-Instruct GGUF (Q4_1) is converted: transformers dequantizes GGUF tensors on load but refuses
`save_pretrained` on a model loaded with `gguf_file`, so the weights are moved into a fresh model built from the
same config minus the GGUF quantization config, which saves normally.
"""

import json
from pathlib import Path

from distill_assets.lib.artifacts import atomic_dir, is_complete
from distill_assets.lib.ids import file_sha256
from distill_assets.lib.settings import embedded_teacher_gguf
from distill_assets.lib.tokenizer import gguf_tokenizer


# ------------------------------------------------------------------------------------------------ conversion
def convert_gguf_to_hf(gguf_path: str | Path, out_dir: str | Path) -> dict:
    """Dequantize a GGUF checkpoint into an HF safetensors folder (fp32) with tokenizer and chat template."""
    import torch  # deferred: heavy optional dependency
    from transformers import AutoModelForCausalLM  # deferred: heavy optional dependency

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    folder, name = str(gguf_path.parent), gguf_path.name
    tok = gguf_tokenizer(gguf_path, out_dir)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    cfg_dict = loaded.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    config = type(loaded.config).from_dict(cfg_dict)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # tied lm_head may be absent from one side; anything else missing means a broken conversion
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF->HF conversion mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
    fresh.tie_weights()
    fresh.generation_config.eos_token_id = tok.eos_token_id
    fresh.generation_config.pad_token_id = tok.pad_token_id
    fresh.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    if not tok.chat_template:
        raise RuntimeError(f"{gguf_path} carries no chat template; the student needs one for chat SFT")
    info = {
        "source": "gguf",
        "gguf_file": str(gguf_path),
        "gguf_sha256": file_sha256(gguf_path),
        "architecture": config.architectures[0] if config.architectures else config.model_type,
        "num_parameters": int(sum(p.numel() for p in fresh.parameters())),
        "dtype": "float32",
    }
    (out_dir / "distill_source.json").write_text(json.dumps(info, indent=2))
    return info


def resolve_student_base(spec: str | None, cache_root: Path) -> tuple[Path, dict]:
    """Materialize the student base as a local HF folder. Returns (folder, provenance info)."""
    if spec:
        p = Path(spec).expanduser()
        if p.is_dir():
            if not (p / "config.json").exists():
                raise FileNotFoundError(f"STUDENT_BASE={spec}: folder has no config.json (not an HF model folder)")
            return p.resolve(), {"source": "local", "path": str(p.resolve())}
        if p.is_file() and p.suffix == ".gguf":
            gguf = p.resolve()
        elif p.exists():
            raise ValueError(f"STUDENT_BASE={spec}: expected an HF model folder or a .gguf file")
        else:
            return _from_hub(spec, cache_root)
    else:
        gguf = embedded_teacher_gguf()
    out = cache_root / "student_base" / f"gguf-{file_sha256(gguf)[:16]}"
    if is_complete(out):
        return out, json.loads((out / "distill_source.json").read_text())
    with atomic_dir(out) as tmp:
        info = convert_gguf_to_hf(gguf, tmp)
    return out, info


def _from_hub(repo_id: str, cache_root: Path) -> tuple[Path, dict]:
    from huggingface_hub import snapshot_download  # deferred: heavy optional dependency

    out = cache_root / "student_base" / ("hub-" + repo_id.replace("/", "--"))
    if not is_complete(out):
        with atomic_dir(out) as tmp:
            snapshot_download(repo_id, local_dir=str(tmp),
                              allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    return out, {"source": "hub", "repo_id": repo_id}
