import json
import logging

import dagster as dg
import pandas as pd

from distill_assets.defs.judge import judged
from distill_assets.defs.partitions import CATEGORY
from distill_assets.lib.tasks import load_tasks
from tests.fakes.openai_server import FakeOpenAIServer
from tests.lib.filters.test_judge import _frame, _judge, scripted


def test_materialize_judged_records_and_caches(duck_resources, store):
    @dg.asset(name="deduplicated", partitions_def=CATEGORY, metadata={"partition_expr": "category"})
    def deduplicated_stand_in() -> pd.DataFrame:
        df = _frame()
        df["keep"], df["verdict"], df["reason"], df["evidence"] = True, "kept", "ok", "{}"
        return df

    with FakeOpenAIServer(responder=scripted) as srv:
        resources = {**duck_resources, "judge": _judge(srv)}
        res = dg.materialize([deduplicated_stand_in, judged], resources=resources, partition_key="support")
        assert res.success
        first_total = srv.total
        assert first_total == 6
        out = res.output_for_node("judged")
        # the demo task's support threshold is 2 (see tasks.yaml), so g1's "2/5" is kept here
        assert load_tasks().category("support").filters.judge_min_score == 2
        assert sorted(out["reason"]) == ["judge_unparseable", "ok", "ok", "ok"]
        calls = store.query_df("SELECT role, status, category FROM teacher_calls")
        assert len(calls) == 6 and set(calls["role"]) == {"judge"} and set(calls["category"]) == {"support"}
        lineage = store.query_df("SELECT example_id, reason, evidence FROM lineage WHERE stage = 'judged'")
        assert len(lineage) == 4
        ev = json.loads(lineage.set_index("example_id").loc["g0", "evidence"])
        assert ev["score"] == 5.0 and ev["rationale"] == "excellent" and ev["judge_model"] == "fake-judge"
        assert ev["call_key"]
        # a rerun answers from the cache: not one request reaches the server
        res2 = dg.materialize([deduplicated_stand_in, judged], resources=resources, partition_key="support")
        assert res2.success and srv.total == first_total
        assert res2.output_for_node("judged")["reason"].tolist() == out["reason"].tolist()


def test_judged_flags_a_judge_that_scores_everything_alike(duck_resources):
    @dg.asset(name="deduplicated", partitions_def=CATEGORY, metadata={"partition_expr": "category"})
    def deduplicated_stand_in() -> pd.DataFrame:
        df = _frame(12)
        df["keep"], df["verdict"], df["reason"], df["evidence"] = True, "kept", "ok", "{}"
        return df

    def always_four(body: dict) -> str:
        prompt = body["messages"][1]["content"]
        if "question 11" in prompt:
            return "no idea"  # unreadable, also on the retry
        return '{"accuracy": 4, "helpfulness": 4, "coherence": 4, "overall": 4, "rationale": "fine"}'

    instance = dg.DagsterInstance.ephemeral()
    with FakeOpenAIServer(responder=always_four) as srv:
        res = dg.materialize([deduplicated_stand_in, judged], resources={**duck_resources, "judge": _judge(srv)},
                             partition_key="support", instance=instance)
    assert res.success
    md = res.asset_materializations_for_node("judged")[0].metadata
    assert md["judge_signal"].value == "no signal: 100% of rows scored 4"
    assert md["score_distribution"].value == {"1": 0, "2": 0, "3": 0, "4": 11, "5": 0, "unparseable": 1,
                                              "judge_error": 0}
    warnings = [e.user_message for e in instance.all_logs(res.run_id) if e.level == logging.WARNING]
    assert any("no signal: 100% of rows scored 4" in w for w in warnings)
    # the per-row lineage evidence is unchanged: each row keeps its own score and call
    out = res.output_for_node("judged")
    ev = json.loads(out.set_index("example_id").loc["g0", "evidence"])
    assert ev["score"] == 4.0 and ev["call_key"]


def test_judged_with_a_spread_of_scores_has_signal(duck_resources):
    @dg.asset(name="deduplicated", partitions_def=CATEGORY, metadata={"partition_expr": "category"})
    def deduplicated_stand_in() -> pd.DataFrame:
        df = _frame(10)
        df["keep"], df["verdict"], df["reason"], df["evidence"] = True, "kept", "ok", "{}"
        return df

    def spread(body: dict) -> str:
        q = int(body["messages"][1]["content"].split("question ")[1].split()[0])
        return json.dumps({"accuracy": 3, "helpfulness": 3, "coherence": 3, "overall": q % 5 + 1, "rationale": "-"})

    with FakeOpenAIServer(responder=spread) as srv:
        res = dg.materialize([deduplicated_stand_in, judged], resources={**duck_resources, "judge": _judge(srv)},
                             partition_key="support")
    md = res.asset_materializations_for_node("judged")[0].metadata
    assert md["judge_signal"].value == "ok"
    assert md["score_distribution"].value == {"1": 2, "2": 2, "3": 2, "4": 2, "5": 2, "unparseable": 0,
                                              "judge_error": 0}
