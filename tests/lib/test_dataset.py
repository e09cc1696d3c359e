import json

import pandas as pd
import pytest

from distill_assets.lib.dataset import clean_frame, export_dataset
from distill_assets.lib.ids import frame_version
from distill_assets.lib.split import split_of
from distill_assets.lib.tasks import load_tasks
from distill_assets.lib.tokenizer import student_tokenizer


@pytest.fixture(scope="module")
def tok():
    return student_tokenizer()


def rows(n):
    out = []
    for i in range(n):
        m = [{"role": "system", "content": "Be nice."}, {"role": "user", "content": f"question {i}"},
             {"role": "assistant", "content": f"answer {i}"}]
        out.append({"example_id": f"g{i:03d}", "generation_id": f"g{i:03d}", "seed_id": f"s{i % 3}",
                    "method": "response", "difficulty": "easy", "source": "seed", "messages": json.dumps(m),
                    "instruction": f"question {i}", "response": f"answer {i}", "system_prompt": "Be nice."})
    return pd.DataFrame(out)


def test_split_deterministic_and_min_validation():
    ids = pd.Series([f"x{i}" for i in range(1000)])
    s = split_of(ids, 0.1)
    assert 0.06 < (s == "validation").mean() < 0.14
    assert (split_of(ids, 0.1) == s).all()
    small = split_of(pd.Series(["a", "b", "c", "d", "e"]), 0.1)
    assert (small == "validation").sum() >= 1
    assert (split_of(pd.Series(["a", "b"]), 0.1) == "validation").sum() <= 1


def test_clean_frame_columns_and_template(tok):
    df = rows(12)
    bad = df.iloc[0].copy()
    bad["example_id"] = "bad"
    bad["messages"] = json.dumps([{"role": "user", "content": "q"}, {"role": "user", "content": "again"}])
    df = pd.concat([df, bad.to_frame().T], ignore_index=True)
    ann, out = clean_frame(df, load_tasks().category("support"), tokenizer=tok)
    assert list(out.columns) == ["example_id", "category", "messages", "split", "seed_id", "method",
                                 "difficulty", "source", "generation_id", "tools"]
    assert "bad" not in set(out["example_id"]) and len(out) == 12
    assert ann.set_index("example_id").loc["bad", "verdict"] == "quarantined"
    m = json.loads(out["messages"].iloc[0])
    assert [x["role"] for x in m] == ["system", "user", "assistant"]
    assert (out["split"] == "validation").sum() >= 1


def test_export_loads_with_datasets(tmp_path, tok):
    _, out = clean_frame(rows(20), load_tasks().category("support"), tokenizer=tok)
    paths = export_dataset(out, tmp_path / "support", frame_version(out))
    import datasets

    ds = datasets.load_dataset("json", data_files={"train": str(paths["train"])}, split="train")
    assert len(ds) == (out["split"] == "train").sum()
    assert ds[0]["messages"][2]["role"] == "assistant"
    assert pd.read_parquet(paths["parquet"]).shape[0] == 20
    assert json.loads(paths["manifest"].read_text())["dataset_version"] == frame_version(out)
    assert not [p for p in (tmp_path / "support").iterdir() if p.name.startswith(".")]  # no temp files left
