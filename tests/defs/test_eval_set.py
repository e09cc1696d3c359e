"""The eval_set asset: it materializes from the eval file, and no generation-side asset depends on it."""

import dagster as dg

from distill_assets.defs import generation, seeds
from distill_assets.defs.eval_set import eval_set
from distill_assets.lib.ledger import open_io_manager, open_store


def test_materialize_eval_set(tmp_path):
    db = str(tmp_path / "d.duckdb")
    res = dg.materialize([eval_set], partition_key="code",
                         resources={"io_manager": open_io_manager(db), "store": open_store(db)})
    assert res.success
    stored = open_store(db).query_df("SELECT * FROM eval_set")
    assert len(stored) == 14 and set(stored["category"]) == {"code"}


def test_generation_never_reads_the_eval_set():
    for a in generation.assets + seeds.assets:
        for key in a.keys:
            assert dg.AssetKey("eval_set") not in a.asset_deps[key]
