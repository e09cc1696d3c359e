import json

import dagster as dg
import pandas as pd
import pytest

from checks.clean_dataset import build_clean_contamination_check
from checks.contamination_result import contamination_check_result
from checks.tables import build_schema_check
from distill_assets.defs.eval_set import eval_set
from distill_assets.defs.partitions import CATEGORY
from distill_assets.defs.resources import embedded_embedder
from distill_assets.lib.contamination import category_shared_text, seed_texts, training_texts
from distill_assets.lib.filters.decontaminate import decontaminate
from distill_assets.lib.ledger import open_io_manager, open_store
from tests.checks.helpers import (
    CATEGORY_NAME,
    category,
    clean_frame,
    clean_rows,
    eval_frame,
    hash_encode,
    seed_pairs,
    seeds,
)

# A real rephrasing of the first support eval prompt ("I earned 500 loyalty points on my last purchase but they
# are not showing in my rewards balance. When do points get added?"): no word 8-gram in common.
PARAPHRASE = ("I got 500 loyalty points from my most recent purchase, but they still aren't in my rewards balance. "
              "When are points added?")


@pytest.fixture(scope="module")
def embedder():
    return embedded_embedder()


def cfg():
    return category().contamination


def test_clean_training_data_passes():
    ev = eval_frame()
    r = contamination_check_result(training_texts(clean_frame()), ev, cfg(), hash_encode)
    assert r.passed, r.description
    assert r.metadata["contaminated_rows"].value == 0


def test_pasted_eval_item_fails_with_13gram_and_8gram_evidence():
    ev = eval_frame()
    item = ev.iloc[2]
    pairs = seed_pairs(n=10) + [(item["prompt"], "Sure, here is some help.")]
    train = training_texts(clean_rows(pairs))
    r = contamination_check_result(train, ev, cfg(), None)
    assert not r.passed and r.severity == dg.AssetCheckSeverity.ERROR
    by_rule = r.metadata["rows_by_rule"].value
    assert by_rule["contaminated_13gram"] == 1 and by_rule["contaminated_8gram"] == 1
    evidence = r.metadata["evidence"].value
    assert {e["eval_id"] for e in evidence} == {item["eval_id"]}
    assert all(e["ngrams"] for e in evidence)
    assert item["eval_id"] in r.metadata["pairs"].value


def test_empty_eval_set_fails_rather_than_passing_vacuously():
    r = contamination_check_result(training_texts(clean_frame(n=3)), eval_frame().iloc[0:0], cfg(), hash_encode)
    assert not r.passed and "eval_set has no rows" in r.description


def test_paraphrase_is_caught_only_by_the_embedding_rule(embedder):
    ev = eval_frame()
    target = ev.iloc[0]
    assert target["prompt"].startswith("I earned 500 loyalty points")
    vec = embedder.encode([target["prompt"], PARAPHRASE])
    cos = float(vec[0] @ vec[1])
    assert cos >= cfg().embed_threshold, cos
    train = training_texts(clean_rows(seed_pairs(n=10) + [(PARAPHRASE, "Points post after delivery.")]))
    no_embed = contamination_check_result(train, ev, cfg(), None)
    assert no_embed.passed, "the paraphrase shares no n-gram: only the embedding rule can catch it"
    r = contamination_check_result(train, ev, cfg(), embedder.encode)
    assert not r.passed
    assert r.metadata["rows_by_rule"].value == {"contaminated_13gram": 0, "contaminated_8gram": 0,
                                                "contaminated_embedding": 1}
    [hit] = r.metadata["evidence"].value
    assert hit["eval_id"] == target["eval_id"] and hit["cosine"] == pytest.approx(cos, abs=1e-3)


def test_demo_seeds_are_not_contaminated(embedder):
    for name in ["support", "math", "code", "classify", "order_tools"]:
        c = category(name)
        r = contamination_check_result(seed_texts(seeds(name)), eval_frame(name), c.contamination, embedder.encode,
                                       subject="seed prompts", shared=category_shared_text(c))
        assert r.passed, (name, r.description, r.metadata["pairs"].value)
        ignored = r.metadata["ignored_shared_text"].value
        assert ignored["computed_from"] == {"seeds": len(seeds(name)), "eval_items": len(eval_frame(name))}
        if name == "classify":  # 75 seeds and 50 eval items in one template
            assert ignored["prefix"] == "classify the intent of this message"
            assert "ignoring the category's shared prefix 'classify the intent of this message'" in r.description
        if name in ("support", "math"):
            assert (ignored["prefix"], ignored["suffix"], ignored["ignored_ngrams"]) == ("", "", {})


TEMPLATE = "Classify the intent of this message: "


def test_templated_paraphrase_is_still_caught_by_the_embedding_rule(embedder):
    """The embedded text is the message after the template: a paraphrase of it stays within the threshold."""
    c = category("classify")
    ev = eval_frame("classify")
    target = eval_frame().iloc[0]["prompt"]
    ev = pd.concat([ev, pd.DataFrame([{**ev.iloc[0].to_dict(), "eval_id": "e_loyalty", "prompt": TEMPLATE + target}])],
                   ignore_index=True)
    train = training_texts(clean_rows([(TEMPLATE + PARAPHRASE, "billing")], "classify"))
    r = contamination_check_result(train, ev, c.contamination, embedder.encode, shared=category_shared_text(c))
    assert r.metadata["rows_by_rule"].value == {"contaminated_13gram": 0, "contaminated_8gram": 0,
                                                "contaminated_embedding": 1}
    [hit] = r.metadata["evidence"].value
    vec = embedder.encode([target, PARAPHRASE])
    assert hit["eval_id"] == "e_loyalty" and hit["cosine"] == pytest.approx(float(vec[0] @ vec[1]), abs=1e-3)


def test_decontaminate_and_check_agree_on_a_templated_category():
    """The stage drops the real overlap after the template, keeps template-only overlap, and the check passes."""
    c = category("classify")
    ev = eval_frame("classify")
    copied = ev.iloc[7]["prompt"]  # "STOP charging my card. I cancelled order 61982 ..."
    pairs = [(TEMPLATE + "Can you ship the blue kettle to a PO box in Alaska?", "shipping"),
             (TEMPLATE + "Is there a size guide for the trail running shoes?", "product_question"),
             (TEMPLATE + "Your app keeps forgetting my saved cards after each update.", "technical"),
             (TEMPLATE + "Please help: " + copied.removeprefix(TEMPLATE), "billing")]
    stage_in = training_texts(clean_rows(pairs, "classify"))
    out = decontaminate(stage_in, ev, c, hash_encode)
    assert out["keep"].tolist() == [True, True, True, False]
    assert out["reason"].iloc[3] == "contaminated_13gram"
    raw = contamination_check_result(stage_in, ev, c.contamination.model_copy(
        update={"strip_shared_affixes": False, "ignore_frequent_ngrams": False}), None)
    assert raw.metadata["contaminated_rows"].value == 4  # without the rules every row "overlaps"
    r = contamination_check_result(out[out["keep"]], ev, c.contamination, hash_encode,
                                   shared=category_shared_text(c))
    assert r.passed, r.description
    assert r.metadata["ignored_shared_text"].value["prefix"] == "classify the intent of this message"


def test_seed_pasted_from_eval_fails():
    s = seeds().head(5).copy()
    s.loc[s.index[0], "prompt"] = eval_frame().iloc[3]["prompt"]
    r = contamination_check_result(seed_texts(s), eval_frame(), cfg(), None, subject="seed prompts")
    assert not r.passed and r.metadata["contaminated_rows"].value == 1


def test_decontaminate_drops_flagged_rows_with_evidence_then_the_check_passes():
    ev = eval_frame()
    stage_in = training_texts(clean_rows(seed_pairs(n=8) + [(ev.iloc[1]["prompt"], "Yes."),
                                                            ("Tell me.", ev.iloc[5]["reference_response"])]))
    out = decontaminate(stage_in, ev, category(), hash_encode)
    dropped = out[~out["keep"]]
    assert len(dropped) == 2 and set(dropped["reason"]) == {"contaminated_13gram"}
    ev0 = json.loads(dropped["evidence"].iloc[0])
    assert ev0["matches"][0]["eval_id"] == ev.iloc[1]["eval_id"] and ev0["matches"][0]["ngrams"]
    assert ev0["matches"][0]["cosine"] is not None
    assert contamination_check_result(stage_in, ev, cfg(), hash_encode).passed is False
    assert contamination_check_result(out[out["keep"]], ev, cfg(), hash_encode).passed


# ---------------------------------------------------------------- in the graph

def _graph(frame: pd.DataFrame):
    @dg.asset(name="clean_dataset", partitions_def=CATEGORY, metadata={"partition_expr": "category"})
    def clean_stand_in() -> pd.DataFrame:
        return frame

    # the one partition this test materializes (reading a never-materialized partition is an error)
    @dg.asset(name="lora_adapter", ins={"clean_dataset": dg.AssetIn(
        partition_mapping=dg.SpecificPartitionsPartitionMapping([CATEGORY_NAME]))})
    def lora_stand_in(clean_dataset: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"rows": [len(clean_dataset)]})

    return [eval_set, clean_stand_in, build_clean_contamination_check(CATEGORY),
            build_schema_check("clean_dataset", CATEGORY), lora_stand_in]


def _resources(tmp_path, embedder):
    db = str(tmp_path / "d.duckdb")
    return {"io_manager": open_io_manager(db), "store": open_store(db),
            "embedder": embedder}


def test_failing_blocking_check_stops_lora_adapter_and_is_visible_on_the_instance(tmp_path, embedder):
    ev = eval_frame()
    planted = clean_rows(seed_pairs(n=10) + [(ev.iloc[4]["prompt"], "Happy to help.")])
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(_graph(planted), partition_key=CATEGORY_NAME, instance=instance,
                            resources=_resources(tmp_path, embedder), raise_on_error=False)
    assert not result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "clean_dataset" in materialized and "lora_adapter" not in materialized
    assert instance.get_latest_materialization_event(dg.AssetKey("lora_adapter")) is None

    key = dg.AssetCheckKey(dg.AssetKey("clean_dataset"), "no_eval_contamination")
    [record] = instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
    assert record.status.value == "FAILED"
    evaluation = record.event.dagster_event.event_specific_data
    assert evaluation.passed is False and evaluation.partition == CATEGORY_NAME
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["contaminated_rows"].value == 1
    assert ev.iloc[4]["eval_id"] in json.dumps(evaluation.metadata["evidence"].value)
    schema = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("clean_dataset"), "schema"), limit=1)[0]
    assert schema.status.value == "SUCCEEDED"


def test_passing_checks_let_lora_adapter_run(tmp_path, embedder):
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(_graph(clean_frame(n=12)), partition_key=CATEGORY_NAME, instance=instance,
                            resources=_resources(tmp_path, embedder), raise_on_error=False)
    assert result.success
    assert instance.get_latest_materialization_event(dg.AssetKey("lora_adapter")) is not None
    evals = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evals == {"no_eval_contamination": True, "schema": True}
