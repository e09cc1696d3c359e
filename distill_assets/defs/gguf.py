"""`gguf_export`: f16 / Q8_0 / Q4_K_M GGUF + Ollama Modelfile (logic in lib/export/gguf), with its parity check."""

import hashlib
import json

import dagster as dg

from checks.gguf_export import build_gguf_export_checks
from checks.upstream import upstream_artifact
from distill_assets.lib import ledger
from distill_assets.lib.artifacts import atomic_dir, is_complete
from distill_assets.lib.export.gguf import export_gguf
from distill_assets.lib.settings import get_settings
from resources.store import DuckDBStore


@dg.asset(
    deps=["merged_model"],
    group_name="export",
    kinds={"gguf", "llamacpp"},
    pool="training",
    code_version="gguf_export_v1",
    description="f16 GGUF (llama.cpp converter) + Q8_0 and Q4_K_M (llama_model_quantize) + Ollama Modelfile.",
)
def gguf_export(context: dg.AssetExecutionContext, store: DuckDBStore) -> dg.MaterializeResult:
    merged = upstream_artifact(context, store, "merged_model")
    out = get_settings().artifacts / "gguf_export" / merged["sha256"][:16]
    if not is_complete(out):
        with atomic_dir(out) as tmp:
            export_gguf(merged["path"], tmp)
    info = json.loads((out / "distill_gguf.json").read_text())["files"]
    meta: dict = {"merged": merged["artifact_id"], "dir": dg.MetadataValue.path(str(out)),
                  "modelfile": dg.MetadataValue.path(str(out / "Modelfile")),
                  "ollama": f"cd {out} && ollama create distill-student -f Modelfile"}
    rows = ["| quant | file | MB | sha256 |", "|---|---|---:|---|"]
    ids: dict[str, str] = {}
    for name, f in info.items():
        path = out / f["file"]
        ids[name] = f"gguf_export:{name}:{f['sha256'][:16]}"
        ledger.register_artifact(
            store,
            artifact_id=ids[name], asset="gguf_export", kind=f"gguf_{name}",
            path=str(path), sha256=f["sha256"], bytes=f["bytes"], parent_artifact_id=merged["artifact_id"],
            dataset_version=merged["dataset_version"], run_id=context.run.run_id,
            metadata={"quant": name, "merged_path": merged["path"]},
        )
        meta[f"{name}_bytes"] = f["bytes"]
        meta[f"{name}_sha256"] = f["sha256"]
        rows.append(f"| {name} | {f['file']} | {f['bytes'] / 1e6:.1f} | `{f['sha256'][:16]}` |")
    meta["files"] = dg.MetadataValue.md("\n".join(rows))
    meta["artifact_ids"] = dg.MetadataValue.json(ids)  # what gguf_parity and eval_report read
    digest = hashlib.sha256("".join(f["sha256"] for f in info.values()).encode()).hexdigest()[:16]
    return dg.MaterializeResult(metadata=meta, data_version=dg.DataVersion(digest))


assets = [gguf_export]
asset_checks = build_gguf_export_checks(gguf_export.key)
