"""clean_frame reads rows as dicts of the columns it needs; the messages equal the former per-row Series path."""

import json

import numpy as np
import pandas as pd

from distill_assets.lib.dataset import build_messages, clean_frame
from distill_assets.lib.tasks import load_tasks
from distill_assets.lib.tokenizer import student_tokenizer


def _rows() -> pd.DataFrame:
    conv = json.dumps([{"role": "user", "content": "Where is my parcel?"}, {"role": "assistant", "content": "On its way."},
                       {"role": "user", "content": "When?"}, {"role": "assistant", "content": "Tomorrow."}])
    return pd.DataFrame({
        "example_id": [f"e{i}" for i in range(6)],
        "instruction": ["Reset my password", "Track order A-1", None, "Refund?", "Hi", "x"],
        "response": ["Use the link on the login page.", "It ships today.", "Tomorrow.", "", "Hello! How can I help?",
                     "y"],
        "system_prompt": ["Be kind.", None, "Be brief.", "Be kind.", "", "S"],
        "messages": [None, "not json", conv, None, None, json.dumps({"a": 1})],
        "seed_id": list("abcdef"), "method": "response", "difficulty": "easy", "source": "seed",
        "generation_id": [f"g{i}" for i in range(6)], "score": np.arange(6.0),
    })


def test_clean_frame_messages_equal_the_series_path():
    df = _rows()
    former = [build_messages(r) for _, r in df.iterrows()]
    annotated, out = clean_frame(df, load_tasks().category("support"), student_tokenizer())
    assert len(annotated) == len(df)
    kept = annotated["keep"].to_numpy(dtype=bool)
    want = {e: json.dumps(m, ensure_ascii=False) for e, m, k in zip(df["example_id"], former, kept) if k}
    assert dict(zip(out["example_id"], out["messages"])) == want
    assert kept.sum() >= 3  # the plain pairs and the conversation render
