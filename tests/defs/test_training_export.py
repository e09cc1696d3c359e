"""The training + export graph end to end through Dagster, on the tiny model: lineage, checks, AWQ on CPU."""

import json

import dagster as dg
import pytest

from distill_assets.defs import awq, gguf, lora, merge, student
from distill_assets.defs.partitions import CATEGORY
from distill_assets.lib.export.awq import awq_unavailable
from distill_assets.lib.ids import frame_version
from distill_assets.lib.ledger import open_io_manager, open_store
from tests.lib.training.tiny_model import TINY_AWQ, TINY_AWQ_BAR, clean_frame, session_dirs


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return session_dirs(tmp_path_factory)


def test_graph_materializes_with_lineage_and_checks(tiny, tmp_path, monkeypatch):
    training_assets = [*student.assets, *lora.assets]
    export_assets = [*merge.assets, *gguf.assets, *awq.assets]
    asset_checks = [*merge.asset_checks, *gguf.asset_checks, *awq.asset_checks]

    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STUDENT_BASE", str(tiny["base"]))
    # random-init 64-wide model: see tests/lib/export/test_gguf.py
    monkeypatch.setenv("DISTILL_GGUF_PARITY_THRESHOLDS", json.dumps({"q8_0": {"min_top1": 0.8}, "q4_k_m": {"min_top1": 0.5}}))
    monkeypatch.setenv("DISTILL_AWQ_PARITY_THRESHOLDS", json.dumps({"w4a16": TINY_AWQ_BAR}))
    db = str(tmp_path / "d.duckdb")
    resources = {"store": open_store(db), "io_manager": open_io_manager(db)}
    keys = CATEGORY.get_partition_keys()
    frame = clean_frame(4, categories=tuple(keys))

    @dg.asset(name="clean_dataset", partitions_def=CATEGORY, metadata={"partition_expr": "category"})
    def clean_dataset(context) -> object:
        return frame[frame["category"] == context.partition_key].reset_index(drop=True)

    for k in keys:
        assert dg.materialize([clean_dataset], partition_key=k, resources=resources).success

    defs = [clean_dataset, *training_assets, *export_assets, *asset_checks]
    cfg = {"ops": {"lora_adapter": {"config": {
        "num_train_epochs": 2, "effective_batch_size": 4, "per_device_batch_size": 4, "learning_rate": 5e-3,
        "max_seq_len": 128, "lora_r": 8, "lora_alpha": 16, "num_threads": 2}},
        "awq_export": {"config": TINY_AWQ}}}
    res = dg.materialize(defs, resources=resources, run_config=cfg, raise_on_error=False,
                         selection=[a.key for a in [*training_assets, *export_assets]])
    checks = {e.asset_check_key.name: e for e in res.get_asset_check_evaluations()}
    assert checks["merged_parity"].passed, checks["merged_parity"].metadata
    assert checks["gguf_parity"].passed, checks["gguf_parity"].metadata["parity"].value
    missing_extra = awq_unavailable()
    if missing_extra is None:
        assert checks["awq_parity"].passed, checks["awq_parity"].metadata["parity"].value
    else:  # nothing written, nothing passed; WARN, so the graph runs on
        assert not checks["awq_parity"].passed and checks["awq_parity"].severity == dg.AssetCheckSeverity.WARN
    assert res.success

    mats = {m.materialization.asset_key.path[-1]: m.materialization.metadata
            for m in res.get_asset_materialization_events()}
    lora_md = mats["lora_adapter"]
    assert lora_md["profile"].value == "full" or "cpu_quickstart" in lora_md["profile_reason"].value
    assert "data:image/png;base64," in lora_md["loss"].value and "| epoch |" in lora_md["loss"].value

    art = resources["store"].query_df("SELECT * FROM artifacts").set_index("artifact_id")
    version = frame_version(frame)
    gguf_rows = art[art["asset"] == "gguf_export"]
    assert set(gguf_rows["kind"]) == {"gguf_f16", "gguf_q8_0", "gguf_q4_k_m"}
    assert (gguf_rows["bytes"] > 0).all() and gguf_rows["sha256"].str.len().eq(64).all()
    merged_id = gguf_rows["parent_artifact_id"].unique().tolist()
    assert len(merged_id) == 1 and art.loc[merged_id[0], "asset"] == "merged_model"
    adapter_id = art.loc[merged_id[0], "parent_artifact_id"]
    assert art.loc[adapter_id, "asset"] == "lora_adapter" and art.loc[adapter_id, "dataset_version"] == version
    dataset_id = art.loc[adapter_id, "parent_artifact_id"]
    assert dataset_id == f"dataset:{version}"
    ds_meta = json.loads(art.loc[dataset_id, "metadata"])
    assert sorted(ds_meta["example_ids"]) == sorted(frame["example_id"])
    base_id = json.loads(art.loc[adapter_id, "metadata"])["base_artifact_id"]
    assert art.loc[base_id, "asset"] == "student_base_model"

    awq_md = mats["awq_export"]
    if missing_extra is not None:
        assert awq_md["status"].value == missing_extra
        assert not (tmp_path / "home" / "artifacts" / "awq_export").exists()  # never a fake folder
        return
    assert awq_md["status"].value == "ok" and awq_md["quant_config"].value["group_size"] == 64
    assert awq_md["vllm_command"].value.startswith(f"vllm serve {awq_md['path'].value}")
    awq_row = art.loc[awq_md["artifact_id"].value]
    assert awq_row["kind"] == "awq_w4a16" and awq_row["parent_artifact_id"] == merged_id[0]
