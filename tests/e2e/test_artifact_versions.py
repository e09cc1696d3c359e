"""Issue 7, part 3: "artifact versions are kept and linked in `artifacts`". Two retrains on different data (the
tiny student, real training and merging): both adapter and merged-model versions stay on disk and in
`artifacts`, each linked to its dataset version and parent, and the names the gate uses (the eval's
adapter_version, the promotion decision's versions) are those artifact ids."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from distill_assets.defs.lora import lora_adapter
from distill_assets.defs.merge import merged_model
from distill_assets.defs.partitions import CATEGORY
from distill_assets.defs.student import student_base_model
from distill_assets.lib.artifacts import artifact_row
from distill_assets.lib.evaluation import variants as vr
from distill_assets.lib.evaluation.variants import adapter_version_of
from distill_assets.lib.ids import frame_version
from distill_assets.lib.production import promotion
from tests.lib.training.tiny_model import clean_frame, session_dirs

TRAIN_CFG = {"num_train_epochs": 1, "effective_batch_size": 4, "per_device_batch_size": 4, "learning_rate": 5e-3,
             "max_seq_len": 96, "lora_r": 4, "lora_alpha": 8, "num_threads": 2}


@pytest.mark.e2e  # real LoRA training and merge of the tiny student, twice
def test_two_retrains_keep_both_versions_linked(tmp_path_factory, distill_home, duck_resources, store,
                                                monkeypatch):
    monkeypatch.setenv("STUDENT_BASE", str(session_dirs(tmp_path_factory)["base"]))
    keys = CATEGORY.get_partition_keys()
    data = {}

    @dg.asset(name="clean_dataset", partitions_def=CATEGORY, metadata={"partition_expr": "category"})
    def clean_dataset(context) -> pd.DataFrame:
        f = data["frame"]
        return f[f["category"] == context.partition_key].reset_index(drop=True)

    graph = [clean_dataset, student_base_model, lora_adapter, merged_model]
    versions = []
    for frame in (clean_frame(2, categories=tuple(keys)), clean_frame(3, categories=tuple(reversed(keys)))):
        data["frame"] = frame
        for k in keys:
            assert dg.materialize([clean_dataset], partition_key=k, resources=duck_resources).success
        res = dg.materialize(graph, resources=duck_resources, selection=[a.key for a in graph[1:]],
                             run_config={"ops": {"lora_adapter": {"config": TRAIN_CFG}}})
        assert res.success
        versions.append(frame_version(store.query_df("SELECT * FROM clean_dataset")))

        # the version the eval report and the gate name this model by is the adapter's artifact id
        merged_id = res.asset_materializations_for_node("merged_model")[0].metadata["artifact_id"].value
        spec = next(s for s in vr.discover_variants({"merged_model": artifact_row(store, merged_id)})
                    if s.name == vr.MERGED)
        latest_lora = store.query_df("SELECT artifact_id FROM artifacts WHERE asset = 'lora_adapter' "
                                     "ORDER BY created_at DESC LIMIT 1").iloc[0]["artifact_id"]
        assert adapter_version_of(spec) == latest_lora

    assert versions[0] != versions[1]
    art = store.query_df("SELECT * FROM artifacts").set_index("artifact_id")
    datasets, loras, merged = (art[art["asset"] == a] for a in ("clean_dataset", "lora_adapter", "merged_model"))
    assert sorted(datasets["dataset_version"]) == sorted(versions)
    assert len(loras) == 2 and sorted(loras["dataset_version"]) == sorted(versions)
    assert len(merged) == 2 and set(merged["parent_artifact_id"]) == set(loras.index)
    for lora_id, row in loras.iterrows():
        assert row["parent_artifact_id"] == f"dataset:{row['dataset_version']}"  # adapter -> dataset
        base_id = json.loads(row["metadata"])["base_artifact_id"]
        assert art.loc[base_id, "asset"] == "student_base_model"  # adapter -> base model
    for _, row in pd.concat([loras, merged]).iterrows():
        assert len(row["sha256"]) == 64 and row["bytes"] > 0
        path = Path(row["path"]).resolve()
        assert path.exists() and (distill_home / "artifacts").resolve() in path.parents  # older ones too

    # the promotion decision between the two versions names both artifacts
    from distill_assets.lib.tasks import load_tasks
    from resources.clock import utcnow

    old_id, new_id = loras.sort_values("created_at").index.tolist()
    with store.connect() as conn:
        conn.execute("INSERT INTO model_versions (adapter_version, promoted, reasons, decided_at) VALUES "
                     "(?, true, '[]', ?), (?, true, '[]', ?)", [old_id, utcnow(), new_id, utcnow()])
    d = promotion.decide(store, new_id, load_tasks())
    promotion.record(store, d, 0, "run")
    row = store.query_df("SELECT p.adapter_version, p.baseline_version, a.asset AS a_asset, b.asset AS b_asset "
                         "FROM promotion_decisions p JOIN artifacts a ON a.artifact_id = p.adapter_version "
                         "JOIN artifacts b ON b.artifact_id = p.baseline_version").iloc[0]
    assert (row["adapter_version"], row["baseline_version"]) == (new_id, old_id)
    assert (row["a_asset"], row["b_asset"]) == ("lora_adapter", "lora_adapter")
