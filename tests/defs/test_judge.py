import json

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
