"""Generation through an offline batch runner (`vllm run-batch`'s file format): export a phase, answer it with
the fake runner, import, export the next phase; then raw generation answers every call from the cache."""

import json
from pathlib import Path

import pandas as pd
import pytest

from distill_assets.lib.errors import InputError
from distill_assets.lib.generation.offline import export_requests, import_results
from distill_assets.lib.generation.plan import generate
from distill_assets.lib.tasks import Category
from resources.llm import LLMResource
from tests.fakes.batch_server import FakeBatchServer

DEMO = Path(__file__).resolve().parents[2] / "distill_assets" / "demo"


def run_batch_file(src: Path, dst: Path, fail: set[str] = frozenset()) -> None:
    """What `vllm run-batch -i src -o dst` writes: one output line per input line, by custom_id."""
    runner = FakeBatchServer(responder=lambda body: "Rewrite: " + body["messages"][-1]["content"][-60:])
    out = []
    for line in src.read_text().splitlines():
        item = json.loads(line)
        assert item["method"] == "POST" and item["url"] == "/v1/chat/completions" and item["body"]["model"] == "m"
        _, answer = runner._answer(item, None)
        if item["custom_id"] in fail:
            answer["response"] = {"status_code": 400, "request_id": "r", "body": {"error": {"message": "bad"}}}
        out.append(json.dumps(answer))
    dst.write_text("\n".join(out) + "\n")


def test_export_run_import_phase_by_phase_then_generate_from_cache(store, tmp_path):
    cat = Category(name="support", description="customer support", system_prompt="Be brief.",
                   seeds=DEMO / "seeds" / "support.jsonl", eval=DEMO / "eval" / "support.jsonl",
                   samples_per_prompt=1, methods={"response": 3, "evol_instruct": {"count": 2, "rounds": 1}})
    seeds = pd.DataFrame([{"seed_id": f"s{i}", "prompt": f"How do I get a refund for order {i}?",
                           "difficulty": "easy", "reference": None, "tests": "[]", "entry_point": None,
                           "source": "seed"} for i in range(3)])
    teacher = LLMResource(base_url="http://127.0.0.1:9/v1", model="m", price_prompt_per_1m=2.0, max_retries=0)
    req, res = tmp_path / "requests.jsonl", tmp_path / "results.jsonl"

    first = export_requests(cat, seeds, store, teacher, "m", req)
    assert (first.phase, first.requests, first.answered) == (1, 5, 0)  # 3 answers + 2 evolutions
    ids = [json.loads(l)["custom_id"] for l in req.read_text().splitlines()]
    run_batch_file(req, res, fail={ids[0]})
    rep = import_results(store, teacher, req, res, category="support")
    assert (rep.answered, rep.failed, rep.unknown) == (4, 1, 0)
    again = export_requests(cat, seeds, store, teacher, "m", req)  # the failed call is asked again
    assert (again.phase, again.requests) == (1, 1)
    run_batch_file(req, res)
    assert import_results(store, teacher, req, res, category="support").answered == 1

    second = export_requests(cat, seeds, store, teacher, "m", req)
    assert (second.phase, second.requests, second.answered) == (2, 2, 5)  # the two evolved instructions
    run_batch_file(req, res)
    assert import_results(store, teacher, req, res).answered == 2
    assert export_requests(cat, seeds, store, teacher, "m", tmp_path / "none.jsonl").phase == 0

    ledger = store.query_df("SELECT * FROM teacher_calls")
    assert len(ledger) == 7 and set(ledger["status"]) == {"ok"}
    assert (ledger["cost_usd"] == ledger["prompt_tokens"] * 2.0 / 1e6 * 0.5).all()
    # a live run keys its calls the same way: every one is answered from the cache (the endpoint is dead)
    with teacher.session(store) as s:
        df, stats = generate(cat, seeds, s)
    assert stats.calls == stats.cached == 7 and stats.failed == 0 and len(df) == 5
    assert set(df["call_key"]) <= set(ledger["call_key"])
    assert json.loads(ledger.set_index("call_key").loc[df["call_key"].iloc[0], "request_json"])["messages"]


def test_import_names_the_bad_line(store, tmp_path):
    req = tmp_path / "requests.jsonl"
    req.write_text('{"custom_id": "a", "body": {"model": "m", "messages": []}}\n{"body": {}}\n')
    (tmp_path / "out.jsonl").write_text("")
    with pytest.raises(InputError, match=r"requests.jsonl:2: field 'custom_id'"):
        import_results(store, LLMResource(model="m"), req, tmp_path / "out.jsonl")
