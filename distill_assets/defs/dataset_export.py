"""`dataset_export`: every category of clean_dataset as one Hugging Face dataset folder with a generated card."""

import dagster as dg

from distill_assets.lib import ledger
from distill_assets.lib.artifacts import dir_digest
from distill_assets.lib.contamination import encoder
from distill_assets.lib.hf_export import export_hf_dataset
from distill_assets.lib.settings import get_settings
from distill_assets.lib.tasks import load_tasks
from resources.embedder import EmbedderResource
from resources.store import DuckDBStore


@dg.asset(
    deps=["clean_dataset"],
    group_name="dataset",
    kinds={"parquet", "huggingface"},
    code_version="dataset-export-v1",
)
def dataset_export(context: dg.AssetExecutionContext, store: DuckDBStore,
                   embedder: EmbedderResource) -> dg.MaterializeResult:
    """clean_dataset as $DISTILL_HOME/exports/dataset/: Parquet and chat JSONL per category (one config each,
    `all` by default; `datasets.load_dataset(DIR)` reads it) and a README.md dataset card whose numbers (sizes,
    teacher and judge models, methods, the filter funnel, contamination, seed provenance, distill version) are
    read from the ledger. `distill export dataset DIR` writes the same folder anywhere."""
    out = get_settings().dataset_export
    facts = export_hf_dataset(store, load_tasks(), out, encode=encoder(embedder, store))
    cats = facts["categories"]
    sha, size = dir_digest(out)
    ledger.register_artifact(
        store, artifact_id=f"dataset_export:{sha[:16]}", asset="dataset_export", kind="hf_dataset", path=str(out),
        sha256=sha, bytes=size, parent_artifact_id=None, dataset_version=None, run_id=context.run.run_id,
        metadata={"rows": facts["rows"], "configs": sorted(cats), "license": facts["license"],
                  "dataset_versions": {n: c["dataset_version"] for n, c in cats.items()}})
    if facts["empty_categories"]:
        context.log.warning(f"no rows to export for {facts['empty_categories']}: they get no config")
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(out)),
        "rows": dg.MetadataValue.int(facts["rows"]),
        "splits": dg.MetadataValue.json(facts["splits"]),
        "configs": dg.MetadataValue.json({n: c["splits"] for n, c in cats.items()}),
        "empty_categories": dg.MetadataValue.json(facts["empty_categories"]),
        "license": dg.MetadataValue.text(facts["license"]),
        "contaminated_rows": dg.MetadataValue.int(sum(c["contamination"]["recheck_contaminated"]
                                                      for c in cats.values())),
        "card": dg.MetadataValue.path(str(out / "README.md")),
    }, data_version=dg.DataVersion("-".join(f"{n}:{c['dataset_version'][:12]}" for n, c in sorted(cats.items()))
                                   or "empty"))


assets = [dataset_export]
