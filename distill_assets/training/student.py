"""`student_base_model`: the HF (safetensors) student that LoRA trains on.

STUDENT_BASE may be a local HF folder, a local .gguf file, or a hub id. Unset, the packaged SmolLM2-135M-Instruct
GGUF (Q4_1) is converted: transformers dequantizes GGUF tensors on load but refuses `save_pretrained` on a model
loaded with `gguf_file`, so the weights are moved into a fresh model built from the same config minus the GGUF
quantization config, which saves normally.
"""


import json
import os
import shutil
import tempfile
from pathlib import Path

import dagster as dg
import pandas as pd

from distill_assets.ids import file_sha256
from distill_assets.settings import embedded_teacher_gguf, get_settings
from resources.store import DuckDBStore

COMPLETE_MARKER = ".complete"


# ----------------------------------------------------------------------------------------------- artifact helpers
def dir_digest(path: str | Path) -> tuple[str, int]:
    """(sha256 over sorted relative paths + file hashes, total bytes) of a folder, or of a single file."""
    import hashlib

    path = Path(path)
    if path.is_file():
        return file_sha256(path), path.stat().st_size
    h = hashlib.sha256()
    total = 0
    for p in sorted(q for q in path.rglob("*") if q.is_file() and q.name != COMPLETE_MARKER):
        rel = p.relative_to(path).as_posix()
        if rel.startswith("checkpoints/"):
            continue
        h.update(rel.encode() + b"\0" + file_sha256(p).encode() + b"\n")
        total += p.stat().st_size
    return h.hexdigest(), total


def latest_artifact(store: DuckDBStore, asset: str) -> dict:
    """The newest `artifacts` row of `asset` (raises with a hint when the asset was never materialized)."""
    if not store.table_exists("artifacts"):
        df = pd.DataFrame()
    else:
        df = store.query_df(
            "SELECT * FROM artifacts WHERE asset = ? ORDER BY created_at DESC LIMIT 1", [asset]
        )
    if df.empty:
        raise RuntimeError(f"no artifact registered for {asset!r}; materialize {asset} first")
    row = df.iloc[0].to_dict()
    row["metadata"] = json.loads(row["metadata"]) if isinstance(row.get("metadata"), str) else {}
    return row


def atomic_dir(final: Path):
    """Context manager yielding a temp folder next to `final`, renamed into place only on success."""
    from contextlib import contextmanager

    @contextmanager
    def _cm():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            yield tmp
            (tmp / COMPLETE_MARKER).write_text("ok\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    return _cm()


def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).exists()


# ------------------------------------------------------------------------------------------------ conversion
def convert_gguf_to_hf(gguf_path: str | Path, out_dir: str | Path) -> dict:
    """Dequantize a GGUF checkpoint into an HF safetensors folder (fp32) with tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
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
    from huggingface_hub import snapshot_download

    out = cache_root / "student_base" / ("hub-" + repo_id.replace("/", "--"))
    if not is_complete(out):
        with atomic_dir(out) as tmp:
            snapshot_download(repo_id, local_dir=str(tmp),
                              allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    return out, {"source": "hub", "repo_id": repo_id}


# ------------------------------------------------------------------------------------------------------ asset
@dg.asset(
    group_name="training",
    kinds={"pytorch", "safetensors"},
    pool="training",
    code_version="student_base_v1",
    description="HF safetensors student base (STUDENT_BASE, or the packaged SmolLM2-135M GGUF converted).",
)
def student_base_model(context: dg.AssetExecutionContext, store: DuckDBStore) -> dg.MaterializeResult:
    spec = os.environ.get("STUDENT_BASE") or None
    folder, info = resolve_student_base(spec, get_settings().artifacts)
    sha, size = dir_digest(folder)
    artifact_id = f"student_base_model:{sha[:16]}"
    model_id = spec or "embedded:SmolLM2-135M-Instruct.Q4_1.gguf"
    store.register_artifact(
        artifact_id=artifact_id, asset="student_base_model", kind="hf_model", path=str(folder), sha256=sha,
        bytes=size, parent_artifact_id=None, dataset_version=None, run_id=context.run.run_id,
        metadata={"base_model_id": model_id, **info},
    )
    context.log.info(f"student base {model_id} at {folder} ({size / 1e6:.1f} MB)")
    return dg.MaterializeResult(
        metadata={
            "artifact_id": artifact_id,
            "base_model_id": model_id,
            "path": dg.MetadataValue.path(str(folder)),
            "sha256": sha,
            "bytes": size,
            "source": info.get("source"),
            "num_parameters": info.get("num_parameters", -1),
        },
        data_version=dg.DataVersion(sha[:16]),
    )
