"""The scale benchmark's building blocks (benchmarks/scale.py, scale_workload.py); the full run is a benchmark,
minutes long even at small N (one process per stage)."""

import json

import pandas as pd

from benchmarks import scale
from benchmarks import scale_workload as wl
from distill_assets.lib.filters.judge import JUDGE_SYSTEM, parse_judge_answer
from distill_assets.lib.records import load_seed_file
from distill_assets.lib.tasks import parse_task_file
from distill_assets.lib.text import normalize_series


def test_seed_prompts_are_distinct_deterministic_english():
    prompts = wl.seed_prompts(5000)
    assert len(set(normalize_series(pd.Series(prompts)))) == 5000  # distinct after normalizing
    assert prompts == wl.seed_prompts(5000)
    assert wl.capacity() >= 1_000_000
    assert all(p.endswith(("?", ".")) and len(p.split()) >= 10 for p in prompts[:200])


def test_answers_are_varied_deterministic_and_judgements_parse():
    prompts = wl.seed_prompts(2000)
    answers = [wl.answer(p) for p in prompts]
    assert answers == [wl.answer(p) for p in prompts]
    assert len(set(answers)) > 0.95 * len(answers)  # a few shared (near-dup work) and short ones by design
    assert any(a == "Yes." for a in answers)
    body = {"messages": [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompts[0]}]}
    scores = {parse_judge_answer(wl.respond({**body, "messages": [body["messages"][0],
                                                                  {"role": "user", "content": p}]})).overall
              for p in prompts[:100]}
    assert scores == {3.0, 4.0, 5.0}
    assert wl.respond({"messages": [{"role": "user", "content": prompts[0]}]}) == answers[0]


def test_workload_task_file_loads(tmp_path):
    task = wl.write_workload(tmp_path, 300)
    tf = parse_task_file(task)
    cat = tf.category(wl.CATEGORY)
    assert cat.samples_per_prompt == 1 and cat.verify == "none"
    assert len(load_seed_file(cat.seeds, cat)) == 300
    assert len((tmp_path / "eval.jsonl").read_text().splitlines()) == len(wl.EVAL_PROMPTS)
    assert json.loads((tmp_path / "eval.jsonl").read_text().splitlines()[0])["prompt"] == wl.EVAL_PROMPTS[0]


def _run(run_s, embed_s, rows=(10, 9), rss=0.5):
    return {"run_s": run_s, "proc_s": run_s + 5, "rss_gb": rss, "rows_in": rows[0], "rows_out": rows[1],
            "embed": {"encode_s": embed_s, "encoded": 100, "requested": 300}}


def test_table_prints_every_stage_side_by_side_with_the_growth_exponent():
    small = {s: _run(10.0, 2.0) for s in scale.STAGES}
    big = {s: _run(100.0, 20.0, rss=1.5) for s in scale.STAGES}  # 10x the rows, 10x the time: exponent 1
    big["deduplicated"] = _run(1000.0, 20.0)  # 100x: exponent 2
    out = scale.table({"file": {1000: small, 10000: big}})
    lines = out.splitlines()
    assert lines[0] == "store: file"
    assert "N=1,000" in lines[1] and "N=10,000" in lines[1] and "exponent 1,000->10,000" in lines[1]
    rows = {line.split("|")[1].strip(): line for line in lines[3:3 + len(scale.STAGES)]}
    assert set(rows) == set(scale.STAGES)
    assert rows["judged"].rstrip(" |").endswith("1.00; 1.00")
    assert rows["deduplicated"].rstrip(" |").endswith("2.00; 2.09")
    assert "peak RSS 1.50 GB" in out


def test_exponent():
    assert scale._exponent(1.0, 4.0, 10, 20) == 2.0
    assert scale._exponent(0.0, 4.0, 10, 20) is None
