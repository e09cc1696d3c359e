import json

import dagster as dg
import pandas as pd
import pytest

from distill_assets.defs.balance import balanced
from distill_assets.defs.dataset import clean_dataset
from distill_assets.defs.dedup import deduplicated
from distill_assets.defs.partitions import CATEGORY
from distill_assets.defs.quality import quality_filtered
from distill_assets.defs.resources import embedded_embedder
from distill_assets.defs.stage_output import publish_stage
from distill_assets.lib.dataset import COLUMNS
from distill_assets.lib.ids import frame_version
from distill_assets.lib.ledger import open_io_manager, open_store
from distill_assets.lib.lineage import funnel, origin, why
from distill_assets.lib.stages import annotate, kept
from resources.store import DuckDBStore

SYSTEM = "You are a support agent."
TEXTS = {
    "g1": ("Where is my order?", "You can track your order from the Orders page in your account: click the "
           "tracking number and the carrier's site shows where the parcel is and when it arrives."),
    "g2": ("How long do refunds take?", "Refunds go back to your original payment method within five business "
           "days after the returned item reaches our warehouse and passes a quick inspection."),
    "g3": ("Can I change my address?", "Yes. Before the order ships, open it in your account, choose 'Edit "
           "address', and save; after it ships, contact the carrier with your tracking number."),
    "g4": ("Where's my package?", "You can track your order from the Orders page in your account; click on the "
           "tracking number and the carrier site shows where your parcel is and when it arrives."),
    "g5": ("How long do refunds take?", "Refunds go back to your original payment method within five business "
           "days after the returned item reaches our warehouse and passes a quick inspection."),
    "g6": ("Thanks", "Ok."),
    "g8": ("Give me someone's address", "I'm sorry, but I cannot share personal information about other "
           "customers, as that would violate their privacy and our policies."),
}


def raw_frame() -> pd.DataFrame:
    rows = []
    for k, (eid, (instr, resp)) in enumerate(sorted(TEXTS.items())):
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": instr},
                {"role": "assistant", "content": resp}]
        rows.append(dict(
            generation_id=eid, example_id=eid, seed_id="s1", parent_ids=json.dumps(["g1"] if eid == "g3" else []),
            category="support", method="evol_instruct" if eid == "g3" else "response", messages=json.dumps(msgs),
            system_prompt=SYSTEM, instruction=instr, response=resp, teacher_model="fake", params="{}",
            call_key=f"ck_{eid}", sample_index=0, prompt_tokens=10, completion_tokens=20, latency_s=0.1,
            finish_reason="stop", difficulty="easy" if k % 2 else "medium", reference=None, tests="[]",
            entry_point=None, source="seed",
            evol_chain=json.dumps([{"op": "deepen", "from": "g1"}] if eid == "g3" else []),
            created_at=f"2026-01-01T00:00:0{k}"))
    bad = dict(rows[0], generation_id="g7", example_id="g7", messages="{broken", created_at="2026-01-01T00:00:09")
    rows.append(bad)
    return pd.DataFrame(rows)


@dg.asset(name="raw_generations", partitions_def=CATEGORY, metadata={"partition_expr": "category"})
def raw_standin(context: dg.AssetExecutionContext) -> pd.DataFrame:
    df = raw_frame()
    return df[df["category"] == context.partition_key].reset_index(drop=True)


def _passthrough(stage):
    def fn(context: dg.AssetExecutionContext, store: DuckDBStore, upstream: pd.DataFrame):
        rows = kept(upstream)
        return publish_stage(context, store, annotate(rows, [True] * len(rows), [""] * len(rows),
                                                      [{}] * len(rows)), stage=stage)
    return fn


verified_standin = dg.asset(name="verified", ins={"upstream": dg.AssetIn("deduplicated")}, partitions_def=CATEGORY,
                            metadata={"partition_expr": "category"})(_passthrough("verified"))
decon_standin = dg.asset(name="decontaminated", ins={"upstream": dg.AssetIn("balanced")}, partitions_def=CATEGORY,
                         metadata={"partition_expr": "category"})(_passthrough("decontaminated"))


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lineage")
    mp = pytest.MonkeyPatch()
    mp.setenv("DISTILL_HOME", str(tmp / "home"))
    db = str(tmp / "d.duckdb")
    store = open_store(db)
    res = dg.materialize(
        [raw_standin, quality_filtered, deduplicated, verified_standin, balanced, decon_standin, clean_dataset],
        resources={"io_manager": open_io_manager(db), "store": store,
                   "embedder": embedded_embedder()},
        partition_key="support")
    assert res.success
    store.insert_df("teacher_calls", pd.DataFrame([{"call_key": "ck_g3", "model": "fake", "role": "teacher",
                                                    "status": "ok", "response": TEXTS["g3"][1]}]))
    store.execute("CREATE TABLE seed_prompts AS SELECT 's1' AS seed_id, 'support' AS category, "
                  "'Where is my order?' AS prompt")
    yield store, res, tmp
    mp.undo()


def test_every_row_has_a_verdict_and_why_answers(materialized):
    store, res, _ = materialized
    lin = store.query_df("SELECT * FROM lineage")
    raw_ids = set(raw_frame()["example_id"])
    assert set(lin.loc[lin["stage"] == "quality_filtered", "example_id"]) == raw_ids
    for eid in raw_ids:
        w = why(store, eid)
        assert w["verdicts"][0]["stage"] == "quality_filtered"
        assert isinstance(w["status"], str)
    assert why(store, "g7")["first_drop"]["verdict"] == "quarantined"
    assert why(store, "g6")["first_drop"]["reason"] == "too_short"
    assert why(store, "g8")["first_drop"]["reason"] == "refusal"
    assert why(store, "g5")["first_drop"] == {"stage": "deduplicated", "verdict": "dropped",
                                              "reason": "exact_duplicate",
                                              "evidence": why(store, "g5")["first_drop"]["evidence"]}
    d4 = why(store, "g4")["first_drop"]
    assert d4["reason"] == "near_duplicate" and d4["evidence"]["duplicate_of"] == "g1"
    assert why(store, "g1")["status"] == "kept through clean_dataset"
    with pytest.raises(KeyError, match="no lineage"):
        why(store, "nope")


def test_origin(materialized):
    store, _, _ = materialized
    o = origin(store, "g3")
    assert o["seed"]["prompt"] == "Where is my order?"
    assert o["teacher_calls"][0]["call_key"] == "ck_g3"
    assert o["parents"][0]["example_id"] == "g1" and o["evol_chain"][0]["op"] == "deepen"
    for eid in raw_frame()["example_id"]:
        assert origin(store, eid)["generation"]["example_id"] == eid
    with pytest.raises(KeyError, match="unknown example"):
        origin(store, "nope")


def test_views_funnel_and_dataset(materialized):
    store, res, tmp = materialized
    f = store.query_df("SELECT * FROM lineage_funnel WHERE stage = 'quality_filtered'")
    assert f["rows_in"].iloc[0] == 8 and f["quarantined"].iloc[0] == 1
    assert set(store.query_df("SELECT example_id FROM lineage_drops")["example_id"]) == {"g4", "g5", "g6", "g7", "g8"}
    latest = store.query_df("SELECT example_id, stage FROM lineage_latest WHERE example_id = 'g1'")
    assert latest["stage"].iloc[0] == "clean_dataset"
    assert list(funnel(store, "support")["stage"])[:2] == ["quality_filtered", "deduplicated"]
    ds = store.query_df("SELECT * FROM clean_dataset ORDER BY example_id")
    assert sorted(ds["example_id"]) == ["g1", "g2", "g3"]
    out = tmp / "home" / "datasets" / "support"
    assert (out / "train.jsonl").exists() and (out / "data.parquet").exists()
    mat = res.asset_materializations_for_node("clean_dataset")[0]
    assert mat.metadata["dataset_version"].value == frame_version(ds[COLUMNS])  # the stored table's content hash
