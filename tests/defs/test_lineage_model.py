"""`distill lineage model`: from a trained adapter to the exact rows that trained it, on both stores.

On a DuckLake the adapter records the snapshot it read clean_dataset at, so the rows come back exactly after
clean_dataset has been rewritten; on the file store the command says when the table no longer holds them."""

import dagster as dg
import pandas as pd
import pytest

from distill_assets.cli import main
from distill_assets.defs import lora, student
from distill_assets.defs.partitions import CATEGORY
from distill_assets.lib.ledger import open_io_manager, open_store
from distill_assets.lib.model_lineage import training_rows
from tests.lib.training.tiny_model import clean_frame, session_dirs

CFG = {"ops": {"lora_adapter": {"config": {
    "num_train_epochs": 1, "effective_batch_size": 4, "per_device_batch_size": 4, "learning_rate": 5e-3,
    "max_seq_len": 96, "lora_r": 4, "lora_alpha": 8, "num_threads": 2}}}}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return session_dirs(tmp_path_factory)


def _train(resources: dict, frame: pd.DataFrame) -> str:
    """Materialize clean_dataset from `frame`, then the tiny student and its adapter; the adapter's id."""
    @dg.asset(name="clean_dataset", partitions_def=CATEGORY, metadata={"partition_expr": "category"})
    def clean_dataset(context) -> pd.DataFrame:
        return frame[frame["category"] == context.partition_key].reset_index(drop=True)

    for k in sorted(set(frame["category"])):
        assert dg.materialize([clean_dataset], partition_key=k, resources=resources).success
    assets = [clean_dataset, *student.assets, *lora.assets]
    res = dg.materialize(assets, resources=resources, run_config=CFG,
                         selection=[a.key for a in [*student.assets, *lora.assets]])
    assert res.success
    md = {m.materialization.asset_key.path[-1]: m.materialization.metadata for m in res.get_asset_materialization_events()}
    return md["lora_adapter"]["artifact_id"].value


def _rewrite(resources: dict, frame: pd.DataFrame) -> None:
    """Replace the first category's clean_dataset rows (a later run of the dataset stage)."""
    cat = sorted(set(frame["category"]))[0]
    changed = frame[frame["category"] == cat].head(2).assign(example_id=lambda d: d["example_id"] + "-new")

    @dg.asset(name="clean_dataset", partitions_def=CATEGORY, metadata={"partition_expr": "category"})
    def clean_dataset(context) -> pd.DataFrame:
        return changed

    assert dg.materialize([clean_dataset], partition_key=cat, resources=resources).success


@pytest.mark.parametrize("backend", ["duckdb", "ducklake"])
def test_lineage_model_names_the_rows_that_trained_the_adapter(backend, tiny, tmp_path, monkeypatch, request,
                                                              capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("DISTILL_HOME", str(home))
    monkeypatch.setenv("STUDENT_BASE", str(tiny["base"]))
    where = {}
    if backend == "ducklake":
        where = request.getfixturevalue("lake_location")
        monkeypatch.setenv("DISTILL_STORE", f"ducklake:postgres:{where['catalog']}")
        monkeypatch.setenv("DISTILL_DATA_PATH", where["data_path"])
    db = str(home / "distill.duckdb")
    resources = {"store": open_store(db, **where), "io_manager": open_io_manager(db, **where)}
    cats = CATEGORY.get_partition_keys()[:2]
    frame = clean_frame(4, categories=tuple(cats))
    adapter = _train(resources, frame)

    got = training_rows(resources["store"], adapter)
    assert sorted(got["rows"]["example_id"]) == sorted(frame["example_id"]) and got["exact"]
    if backend == "ducklake":
        assert got["dataset_version"].startswith("snapshot:")
        assert "AT (VERSION => " in got["sql"]
    _rewrite(resources, frame)
    after = training_rows(resources["store"], adapter)
    if backend == "ducklake":  # time travel: the very rows, although the table has changed since
        assert sorted(after["rows"]["example_id"]) == sorted(frame["example_id"]) and after["exact"]
        same = resources["store"].query_df(after["sql"])
        assert len(same) == len(frame)
    else:  # the file store keeps one version: it says the table moved on and which recorded rows remain
        assert not after["exact"] and "changed since" in after["note"]
        assert len(after["rows"]) == len(frame) - int((frame["category"] == cats[0]).sum())

    capsys.readouterr()
    assert main(["lineage", "model", adapter]) == 0
    out = capsys.readouterr().out
    assert f"{adapter} was trained on dataset:" in out and "query: SELECT * FROM clean_dataset" in out
    assert sorted(frame["example_id"])[-1] in out or backend == "duckdb"
    assert main(["lineage", "model", "lora_adapter:nope"]) == 2
