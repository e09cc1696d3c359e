"""Parity thresholds and verdicts: inference is tested after each conversion step, and these decide pass/fail.

- merge: fp32 logits of the merged model vs base + unmerged adapter on fixed prompts; max |diff| <=
  MERGE_MAX_ABS_DIFF. Merging is exact up to float rounding (~1e-4 on SmolLM2-135M, r 32).
- GGUF: each file run teacher-forced in llama.cpp on the same prompts as the merged HF model: top-1 agreement and
  perplexity ratio, with a threshold per quant (quantization legitimately changes some argmaxes, more at 4 bits),
  identical tokenization, and the file's sha256 unchanged since export.
- AWQ: the compressed-tensors folder loaded (decompressed) in transformers, teacher-forced on the same prompts,
  with the same metrics and verdict as a GGUF file; the prompts are held out from its calibration data (the
  task's training conversations).
"""

import json
import math
from pathlib import Path

import numpy as np

from distill_assets.lib.settings import awq_parity_thresholds_raw, gguf_parity_thresholds_raw

MERGE_MAX_ABS_DIFF = 1e-3
# Measured on SmolLM2-135M (merged after a short LoRA run), 5 prompts / 233 tokens:
#   f16 top-1 0.996, ppl ratio 1.001; q8_0 0.961, 1.001; q4_k_m 0.880, 1.076. Thresholds leave margin for
#   other students; a broken export (shuffled embeddings, wrong tokenizer) lands far below.
GGUF_THRESHOLDS: dict[str, dict[str, float]] = {
    "f16": {"min_top1": 0.97, "max_ppl_ratio": 1.02, "min_tokenizer_match": 1.0},
    "q8_0": {"min_top1": 0.90, "max_ppl_ratio": 1.05, "min_tokenizer_match": 1.0},
    "q4_k_m": {"min_top1": 0.70, "max_ppl_ratio": 1.25, "min_tokenizer_match": 1.0},
}

# W4A16 group 64 (llm-compressor AWQ) is held to the 4-bit GGUF bar: both are 4-bit weights with per-group scales.
# Measured on the packaged SmolLM2-135M-Instruct (dequantized from its Q4_1 GGUF), same prompts: 16 calibration
# blocks x 256 tokens, n_grid 5 (the quickstart's) top-1 0.747, ppl ratio 1.122; 16 x 512 tokens 0.773, 1.190.
AWQ_THRESHOLDS: dict[str, dict[str, float]] = {"w4a16": dict(GGUF_THRESHOLDS["q4_k_m"])}


def _with_overrides(base: dict, raw: str | None, env_name: str) -> dict:
    merged = {k: dict(v) for k, v in base.items()}
    if raw:
        try:
            overrides = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{env_name} is not valid JSON: {e}") from None
        for quant, values in overrides.items():
            merged.setdefault(quant, {"min_top1": 1.0, "max_ppl_ratio": 1.0, "min_tokenizer_match": 1.0})
            merged[quant].update(values)
    return merged


def gguf_thresholds() -> dict:
    """GGUF_THRESHOLDS, with per-quant overrides from env DISTILL_GGUF_PARITY_THRESHOLDS (JSON), e.g.
    '{"q4_k_m": {"min_top1": 0.8}}' for a student whose 4-bit export should be held to a stricter bar."""
    return _with_overrides(GGUF_THRESHOLDS, gguf_parity_thresholds_raw(), "DISTILL_GGUF_PARITY_THRESHOLDS")


def awq_thresholds() -> dict:
    """AWQ_THRESHOLDS, with overrides from env DISTILL_AWQ_PARITY_THRESHOLDS (JSON, '{"w4a16": {...}}')."""
    return _with_overrides(AWQ_THRESHOLDS, awq_parity_thresholds_raw(), "DISTILL_AWQ_PARITY_THRESHOLDS")


def merge_passed(result: dict) -> bool:
    """`merge_parity` output within MERGE_MAX_ABS_DIFF."""
    return bool(result["max_abs_diff"] <= MERGE_MAX_ABS_DIFF)


def evaluate_gguf_report(report: dict, thresholds: dict | None = None) -> tuple[bool, list[dict]]:
    """`evaluate_parity_report` of `gguf_parity_report` output, under the GGUF thresholds by default."""
    return evaluate_parity_report(report, thresholds or gguf_thresholds())


def evaluate_parity_report(report: dict, thresholds: dict) -> tuple[bool, list[dict]]:
    """Apply per-quant thresholds to a {quant: parity metrics} report; every quant must pass."""
    rows, ok = [], True
    for quant, m in report.items():
        th = thresholds.get(quant)
        if th is None:
            rows.append({"quant": quant, "passed": False, "why": "no threshold for this quant"})
            ok = False
            continue
        why = []
        if not m.get("finite", False):
            why.append("non-finite logits")
        if not m["top1_agreement"] >= th["min_top1"]:
            why.append(f"top-1 {m['top1_agreement']:.3f} < {th['min_top1']}")
        ratio = m["ppl_ratio"]
        if not (math.isfinite(ratio) and ratio <= th["max_ppl_ratio"]):
            why.append(f"ppl ratio {ratio:.4f} > {th['max_ppl_ratio']}")
        if m.get("tokenizer_match", 1.0) < th["min_tokenizer_match"]:
            why.append(f"tokenizer match {m['tokenizer_match']:.2f} < {th['min_tokenizer_match']}")
        if m.get("sha256_ok") is False:
            why.append("file changed since export (sha256 mismatch)")
        rows.append({"quant": quant, "passed": not why, "why": "; ".join(why) or "ok",
                     "top1": round(m["top1_agreement"], 4), "ppl_ratio": round(ratio, 4) if math.isfinite(ratio)
                     else str(ratio), "generation": m.get("generation", "")})
        ok &= not why
    return ok and bool(report), rows


def parity_table(rows: list[dict]) -> str:
    """Markdown table of `evaluate_parity_report` rows (with a short greedy sample per quant)."""
    table = ["| quant | passed | top-1 | ppl ratio | why | greedy sample |", "|---|---|---:|---:|---|---|"]
    table += [f"| {r['quant']} | {r['passed']} | {r.get('top1', '')} | {r.get('ppl_ratio', '')} | {r['why']} | "
              f"{str(r.get('generation', '')).replace('|', '/').replace(chr(10), ' ')[:60]} |" for r in rows]
    return "\n".join(table)



# --- teacher-forced metrics, shared by the GGUF and AWQ checks ------------------------------------------

def hf_logits(model_dir: str | Path, token_ids: list[list[int]]) -> list:
    import torch  # deferred: heavy optional dependency
    from transformers import AutoModelForCausalLM  # deferred: heavy optional dependency

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(torch.tensor([ids])).logits[0].numpy() for ids in token_ids]


def _nll(logits, ids) -> tuple[float, int]:
    lg = logits[:-1].astype(np.float64)
    tgt = np.asarray(ids[1:])
    m = lg.max(-1, keepdims=True)
    logz = (m[:, 0] + np.log(np.exp(lg - m).sum(-1)))
    return float((logz - lg[np.arange(len(tgt)), tgt]).sum()), len(tgt)


def parity_metrics(ref_logits: list, test_logits: list, token_ids: list[list[int]]) -> dict:
    """Top-1 agreement under teacher forcing and perplexity ratio (test / reference) over all prompts."""
    agree = total = 0
    nll_ref = nll_test = 0.0
    ntok = 0
    finite = True
    for r, t, ids in zip(ref_logits, test_logits, token_ids):
        v = min(r.shape[-1], t.shape[-1])
        r, t = r[:, :v], t[:, :v]
        finite &= bool(np.isfinite(t).all())
        agree += int((r.argmax(-1) == t.argmax(-1)).sum())
        total += len(ids)
        a, n = _nll(r, ids)
        b, _ = _nll(t, ids)
        nll_ref += a
        nll_test += b
        ntok += n
    ppl_ref = float(np.exp(nll_ref / max(ntok, 1)))
    ppl_test = float(np.exp(nll_test / max(ntok, 1))) if finite else float("inf")
    return {"top1_agreement": agree / max(total, 1), "ppl_ref": ppl_ref, "ppl": ppl_test,
            "ppl_ratio": ppl_test / ppl_ref if ppl_ref > 0 else float("inf"), "tokens": total, "finite": finite}
