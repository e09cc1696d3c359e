"""The dataset export without the graph: a ledger built by hand, exported, loaded with `datasets` (offline), and
the card's numbers compared with the ledger's."""

import json

import pandas as pd
import pytest
import yaml

from distill_assets.lib import ledger
from distill_assets.lib.hf_export import export_hf_dataset
from distill_assets.lib.stages import annotate
from distill_assets.lib.tasks import load_tasks

CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"id": "c1", "type": "function", "function": {"name": "lookup_order", "arguments": '{"order_id": "A-1001"}'}}]}


def _clean(cat, n, tools=None):
    rows = []
    for i in range(n):
        last = CALL if tools else {"role": "assistant", "content": f"Answer {i} about the order."}
        msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": f"Question {i}?"}, last]
        rows.append({"example_id": f"{cat}{i}", "category": cat, "messages": json.dumps(msgs),
                     "split": "validation" if i == 0 else "train", "seed_id": f"s{i}", "method": "response",
                     "difficulty": "easy", "source": "seed", "generation_id": f"{cat}{i}",
                     "tools": json.dumps(tools) if tools else None})
    return pd.DataFrame(rows)


@pytest.fixture
def ledger_store(store):
    tasks = load_tasks()
    clean = pd.concat([_clean("support", 4), _clean("order_tools", 3, tasks.category("order_tools").tools_json())])
    store.insert_df("clean_dataset", clean)
    store.insert_df("raw_generations", pd.DataFrame({"generation_id": clean["generation_id"],
                                                     "teacher_model": ["big-teacher"] * 5 + ["tool-teacher"] * 2}))
    store.insert_df("seed_prompts", pd.DataFrame({"category": ["support"] * 3 + ["order_tools"] * 2,
                                                  "source": ["seed", "seed", "production", "seed", "seed"],
                                                  "source_file": ["s.jsonl"] * 2 + ["production_failures"]
                                                  + ["o.jsonl"] * 2}))
    for cat, n in (("support", 6), ("order_tools", 5)):
        ids = [f"{cat}{i}" for i in range(n)]
        keep = [i < n - 2 for i in range(n)]
        ledger.record_lineage(store, annotate(pd.DataFrame({"example_id": ids}), keep,
                                              ["" if k else "too_short" for k in keep], [{}] * n),
                              "quality_filtered", cat, "r1")
        ledger.record_lineage(store, annotate(pd.DataFrame({"example_id": ids[:n - 2]}), [True] * (n - 2),
                                              [""] * (n - 2), [{}] * (n - 2)), "clean_dataset", cat, "r1")
    return store, tasks


def test_export_loads_and_the_card_matches_the_ledger(ledger_store, tmp_path):
    import datasets

    store, tasks = ledger_store
    out = tmp_path / "ds"
    facts = export_hf_dataset(store, tasks, out)
    every = datasets.load_dataset(str(out))
    assert {s: len(every[s]) for s in every} == {"train": 5, "validation": 2}
    tools = datasets.load_dataset(str(out), "order_tools")
    msg = tools["train"][0]["messages"][-1]
    assert msg["content"] == "" and msg["tool_calls"][0]["function"]["name"] == "lookup_order"
    assert json.loads(tools["train"][0]["tools"])[0]["function"]["name"] == "lookup_order"
    support = datasets.load_dataset("json", data_files=str(out / "jsonl" / "support" / "train.jsonl"), split="train")
    assert len(support) == 3 and "tool_calls" not in support[0]["messages"][-1]  # chat JSONL: only present keys

    card = (out / "README.md").read_text()
    head = yaml.safe_load(card.split("---")[1])
    assert head["license"] == tasks.license and head["configs"][0] == {
        "config_name": "all", "default": True, "data_files": [{"split": "train", "path": "data/*/train.parquet"},
                                                              {"split": "validation",
                                                               "path": "data/*/validation.parquet"}]}
    got = {(c["config_name"], s["name"]): s["num_examples"] for c in head["dataset_info"] for s in c["splits"]}
    assert got == {("support", "train"): 3, ("support", "validation"): 1, ("order_tools", "train"): 2,
                   ("order_tools", "validation"): 1}
    funnel = store.query_df("SELECT * FROM lineage_funnel")
    for r in funnel.itertuples():
        row = next(f for f in facts["categories"][r.category]["funnel"] if f["stage"] == r.stage)
        assert (row["rows_in"], row["kept"], row["dropped"], row["quarantined"]) == (
            r.rows_in, r.kept, r.dropped, r.quarantined)
        assert f"| {r.stage} | {r.rows_in} | {r.kept} | {r.dropped} | {r.quarantined} |" in card
    s = facts["categories"]["support"]
    assert s["teacher_models"] == {"big-teacher": 4} and s["drop_reasons"] == {"quality_filtered": {"too_short": 2}}
    assert s["seeds"] == {"rows": 3, "by_source": {"production": 1, "seed": 2},
                          "files": ["production_failures", "s.jsonl"]}
    assert facts["categories"]["order_tools"]["teacher_models"] == {"big-teacher": 1, "tool-teacher": 2}
    assert s["contamination"]["recheck_contaminated"] == 0 and s["contamination"]["rules"] == ["13-gram", "8-gram"]
    assert set(facts["empty_categories"]) == {"math", "code", "classify"}
    assert "`math`" in card and f"distill {facts['distill_version']}" in card
    assert json.loads((out / "card.json").read_text())["rows"] == 7


def test_export_replaces_the_folder_and_leaves_no_temporary_files(ledger_store, tmp_path):
    store, tasks = ledger_store
    out = tmp_path / "ds"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    export_hf_dataset(store, tasks, out)
    assert not (out / "stale.txt").exists() and (out / "README.md").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
