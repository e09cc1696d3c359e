"""AutoAWQ 4-bit (w_bit 4, GEMM, group 128) of the merged model, for vLLM `--quantization awq`.

Needs CUDA and the `gpu` extra (autoawq). Without them `awq_export` materializes an explicit "skipped" record in
its metadata and writes no file. AutoAWQ is deprecated upstream (its repo is archived; vLLM's llm-compressor is
the maintained successor and can write the same AWQ checkpoint format); lib/export/awq.py replaces this module.
Calibration uses the task's own training conversations (128 samples, as LLaMA-Factory does for GPTQ) instead of
AutoAWQ's default pile-val download, which also keeps it offline.
"""

import importlib.util
import json
from pathlib import Path

import pandas as pd

AWQ_QUANT_CONFIG = {"zero_point": True, "q_group_size": 128, "w_bit": 4, "version": "GEMM"}
CALIBRATION_SAMPLES = 128


def awq_availability() -> tuple[bool, str]:
    try:
        import torch  # deferred: heavy optional dependency

        cuda = torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken torch install is "no CUDA" here
        cuda = False
    if not cuda:
        return False, "skipped: needs CUDA"
    if importlib.util.find_spec("awq") is None:
        return False, "skipped: needs the gpu extra (pip install 'distill[gpu]' for autoawq)"
    return True, "ok"


def vllm_command(model_dir: str | Path, max_model_len: int = 4096) -> str:
    return f"vllm serve {model_dir} --quantization awq --max-model-len {max_model_len} --port 8000"


def calibration_texts(df: pd.DataFrame, tokenizer, n: int = CALIBRATION_SAMPLES) -> list[str]:
    rows = df[df["split"] == "train"] if "split" in df.columns else df
    rows = rows.sort_values("example_id").head(n)
    return [tokenizer.apply_chat_template(json.loads(m), tokenize=False) for m in rows["messages"]]


def awq_quantize(merged_dir: str | Path, out_dir: str | Path, calib: list[str]) -> dict:
    from awq import AutoAWQForCausalLM  # deferred: heavy optional dependency
    from transformers import AutoTokenizer  # deferred: heavy optional dependency

    tok = AutoTokenizer.from_pretrained(str(merged_dir))
    model = AutoAWQForCausalLM.from_pretrained(str(merged_dir), safetensors=True)
    model.quantize(tok, quant_config=dict(AWQ_QUANT_CONFIG), calib_data=calib,
                   n_samples=len(calib), max_calib_seq_len=512)
    model.save_quantized(str(out_dir))
    tok.save_pretrained(str(out_dir))
    info = {"quant_config": AWQ_QUANT_CONFIG, "calibration_samples": len(calib), "merged_dir": str(merged_dir)}
    (Path(out_dir) / "distill_awq.json").write_text(json.dumps(info, indent=2))
    return info
