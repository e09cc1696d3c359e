import pandas as pd

from distill_assets.lib.contamination import find_contamination, training_texts
from tests.checks.helpers import category, clean_rows, eval_frame, seed_pairs


def cfg():
    return category().contamination


def test_eval_answer_pasted_into_a_response_is_caught_by_13grams():
    ev = eval_frame()
    item = ev[ev["reference_response"].notna()].iloc[0]
    train = training_texts(clean_rows(seed_pairs(n=5) + [("Any tips on this?", item["reference_response"])]))
    m = find_contamination(train, ev, cfg(), None)
    assert set(m["rule"]) == {"contaminated_13gram"}  # 8-grams compare against eval questions only
    assert set(m["train_field"]) == {"response"} and set(m["eval_field"]) == {"reference_response"}


def test_short_eval_text_is_matched_whole():
    ev = pd.DataFrame([{"eval_id": "e1", "prompt": "Where is my parcel right now?", "reference_response": None}])
    train = pd.DataFrame([{"example_id": "x", "instruction": "Hi. WHERE is my parcel, right now? Thanks",
                           "response": "ok"}])
    m = find_contamination(train, ev, cfg(), None)
    assert set(m["rule"]) == {"contaminated_13gram", "contaminated_8gram"}
    assert m["ngrams"].iloc[0] == ["where is my parcel right now"]
