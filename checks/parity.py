"""Parity asset checks: "always test inference after each conversion step" (the guide), made blocking.

- `merged_parity` (on merged_model): fp32 logits of the merged model vs base + unmerged adapter on fixed prompts;
  max |diff| <= MERGE_MAX_ABS_DIFF. Merging is exact up to float rounding (~1e-4 on SmolLM2-135M, r 32).
- `gguf_parity` (on gguf_export): each GGUF is loaded with llama.cpp and run teacher-forced on the same prompts as
  the merged HF model: top-1 agreement and perplexity ratio, with a threshold per quant (quantization legitimately
  changes some argmaxes, more at 4 bits), identical tokenization, and the file's sha256 unchanged since export.
"""

import json
import math
import os

import dagster as dg

from distill_assets.export.gguf import gguf_export
from distill_assets.export.merge import merged_model
from distill_assets.ids import file_sha256
from distill_assets.training.student import latest_artifact
from resources.store import DuckDBStore

MERGE_MAX_ABS_DIFF = 1e-3
# Measured on SmolLM2-135M (merged after a short LoRA run), 5 prompts / 233 tokens:
#   f16 top-1 0.996, ppl ratio 1.001; q8_0 0.961, 1.001; q4_k_m 0.880, 1.076. Thresholds leave margin for
#   other students; a broken export (shuffled embeddings, wrong tokenizer) lands far below.
GGUF_THRESHOLDS: dict[str, dict[str, float]] = {
    "f16": {"min_top1": 0.97, "max_ppl_ratio": 1.02, "min_tokenizer_match": 1.0},
    "q8_0": {"min_top1": 0.90, "max_ppl_ratio": 1.05, "min_tokenizer_match": 1.0},
    "q4_k_m": {"min_top1": 0.70, "max_ppl_ratio": 1.25, "min_tokenizer_match": 1.0},
}


def gguf_thresholds() -> dict:
    """GGUF_THRESHOLDS, with per-quant overrides from env DISTILL_GGUF_PARITY_THRESHOLDS (JSON), e.g.
    '{"q4_k_m": {"min_top1": 0.8}}' for a student whose 4-bit export should be held to a stricter bar."""
    merged = {k: dict(v) for k, v in GGUF_THRESHOLDS.items()}
    raw = os.environ.get("DISTILL_GGUF_PARITY_THRESHOLDS")
    if raw:
        for quant, values in json.loads(raw).items():
            merged.setdefault(quant, {"min_top1": 1.0, "max_ppl_ratio": 1.0, "min_tokenizer_match": 1.0})
            merged[quant].update(values)
    return merged


def evaluate_gguf_report(report: dict, thresholds: dict | None = None) -> tuple[bool, list[dict]]:
    """Apply per-quant thresholds to `gguf_parity_report` output; every quant must pass."""
    thresholds = thresholds or gguf_thresholds()
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


@dg.asset_check(asset=merged_model, blocking=True, description="merged vs base+adapter logits, fp32, max|diff| <= 1e-3")
def merged_parity(store: DuckDBStore) -> dg.AssetCheckResult:
    from distill_assets.export.merge import merge_parity

    merged = latest_artifact(store, "merged_model")
    md = merged["metadata"]
    r = merge_parity(md["base_model_path"], md["adapter_path"], merged["path"])
    return dg.AssetCheckResult(
        passed=bool(r["max_abs_diff"] <= MERGE_MAX_ABS_DIFF),
        metadata={"max_abs_diff": r["max_abs_diff"], "threshold": MERGE_MAX_ABS_DIFF,
                  "top1_agreement": r["top1_agreement"], "prompts": r["prompts"], "tokens": r["tokens"],
                  "merged": merged["artifact_id"]},
    )


def latest_gguf_files(store: DuckDBStore) -> tuple[dict, dict]:
    merged = latest_artifact(store, "merged_model")
    rows = store.query_df(
        "SELECT * FROM artifacts WHERE asset = 'gguf_export' AND parent_artifact_id = ? ORDER BY created_at",
        [merged["artifact_id"]],
    )
    files = {}
    for r in rows.itertuples(index=False):
        files[r.kind.removeprefix("gguf_")] = {"path": r.path, "sha256": r.sha256}
    if not files:
        raise RuntimeError(f"no gguf_export artifacts for {merged['artifact_id']}; materialize gguf_export first")
    return merged, files


@dg.asset_check(asset=gguf_export, blocking=True,
                description="llama.cpp teacher-forced top-1 agreement + perplexity ratio vs merged HF, per quant")
def gguf_parity(store: DuckDBStore) -> dg.AssetCheckResult:
    from distill_assets.export.gguf import gguf_parity_report

    merged, files = latest_gguf_files(store)
    report = gguf_parity_report(merged["path"], {k: v["path"] for k, v in files.items()})
    for k, m in report.items():
        m["sha256_ok"] = file_sha256(files[k]["path"]) == files[k]["sha256"]
    passed, rows = evaluate_gguf_report(report)
    table = ["| quant | passed | top-1 | ppl ratio | why | greedy sample |", "|---|---|---:|---:|---|---|"]
    table += [f"| {r['quant']} | {r['passed']} | {r.get('top1', '')} | {r.get('ppl_ratio', '')} | {r['why']} | "
              f"{str(r.get('generation', '')).replace('|', '/').replace(chr(10), ' ')[:60]} |" for r in rows]
    return dg.AssetCheckResult(
        passed=passed,
        metadata={"parity": dg.MetadataValue.md("\n".join(table)), "report": dg.MetadataValue.json(report),
                  "thresholds": dg.MetadataValue.json(gguf_thresholds()), "merged": merged["artifact_id"]},
    )


asset_checks = [merged_parity, gguf_parity]
