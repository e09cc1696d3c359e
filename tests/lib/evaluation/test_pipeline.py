import pandas as pd
import pytest

from distill_assets.lib.evaluation.metrics import BASE, MERGED, TEACHER
from distill_assets.lib.evaluation.pipeline import judge_pair_frame, judged_categories
from distill_assets.lib.tasks import load_tasks


def _scored() -> pd.DataFrame:
    rows = []
    for cat in ("support", "classify"):
        for v in (TEACHER, BASE, MERGED, "gguf_q8_0"):
            rows.append({"example_id": f"{cat}-1", "variant": v, "category": cat, "prompt": "p", "response": v})
    return pd.DataFrame(rows)


def test_open_ended_scope_judges_only_categories_without_an_exact_verifier():
    cats = {c.name: c for c in load_tasks().categories}
    assert judged_categories(cats, "all") == set(cats)
    assert judged_categories(cats, "open_ended") == {n for n, c in cats.items() if c.verify == "none"}
    assert "classify" not in judged_categories(cats, "open_ended")
    with pytest.raises(ValueError, match="judge_scope"):
        judged_categories(cats, "some")


def test_pairs_are_built_for_the_judged_categories_only():
    every = judge_pair_frame(_scored(), judge_exports=False)
    assert set(every["category"]) == {"support", "classify"}
    # base and merged vs the teacher, merged vs base: three pairs per item, exports not judged
    assert sorted(every[every["category"] == "support"]["comparison"]) == ["vs_base", "vs_teacher", "vs_teacher"]
    some = judge_pair_frame(_scored(), judge_exports=True, categories={"support"})
    assert set(some["category"]) == {"support"} and len(some) == 4  # the q8_0 export vs the teacher too
    assert judge_pair_frame(_scored(), judge_exports=False, categories=set()).empty
