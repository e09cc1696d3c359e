"""A spend cap that holds across runs, partitions and processes: four processes share one cap (on the file store
and on a DuckLake, whose writers commit optimistically); a rerun after the cap makes no new call and says why."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from distill_assets.lib.ledger import open_store
from resources.llm import ChatRequest, LLMResource
from tests.fakes.openai_server import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[2]
PRICE = 1000.0  # USD per 1M completion tokens: a 16-token answer costs at most $0.016
MAX_TOKENS = 16

WORKER = textwrap.dedent("""
    import json, sys
    from distill_assets.lib.ledger import open_store
    from resources.llm import ChatRequest, LLMResource
    db, url, category, n, cap = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    where = json.loads(sys.argv[6])
    llm = LLMResource(base_url=url, model="m", max_concurrency=4, price_completion_per_1m={price},
                      max_budget_usd=cap)
    reqs = [ChatRequest(messages=[{{"role": "user", "content": f"{{category}} question {{i}}"}}],
                        max_tokens={max_tokens}) for i in range(n)]
    with llm.session(open_store(db, **where), run_id=category) as s:
        res = s.complete(reqs, category=category)
    print(sum(r.ok for r in res), sum(r.status == "budget_exceeded" for r in res))
""").format(price=PRICE, max_tokens=MAX_TOKENS)


def _answer(body: dict) -> str:
    return " ".join(["word"] * MAX_TOKENS)  # every answer uses its whole token budget


def _spent(db: str, where: dict | None = None) -> float:
    return float(open_store(db, **(where or {})).query_df(
        "SELECT coalesce(sum(cost_usd), 0) AS c FROM teacher_calls")["c"][0])


@pytest.mark.parametrize("backend", ["file", "ducklake"])
def test_four_processes_share_one_cap(backend, tmp_path, request):
    db = str(tmp_path / "d.duckdb")
    where = request.getfixturevalue("lake_location") if backend == "ducklake" else {}
    open_store(db, **where).query_df("SELECT 1")  # create the ledger before the processes race for it
    call_cost = MAX_TOKENS * PRICE / 1e6
    cap = 20 * call_cost  # about 20 calls in all, 4 x 15 asked for
    with FakeOpenAIServer(responder=_answer, latency_s=0.01) as srv:
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, db, srv.base_url, f"cat{i}", "15", str(cap),
                                   json.dumps(where)],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(4)]
        outs = [p.communicate(timeout=240) for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
        ok = sum(int(o[0].split()[0]) for o in outs)
        stopped = sum(int(o[0].split()[1]) for o in outs)
        spent = _spent(db, where)
        assert spent <= cap + 4 * call_cost + 1e-9, (spent, cap)
        assert ok >= 15 and stopped > 0 and ok + stopped == 60
        assert srv.total == ok  # a stopped call is never sent
        # reruns after the cap: a worker stopped while another held a grant it later returned can leave headroom
        # for a few calls; past it nothing is sent, and the result says why
        headroom = int((cap - spent) // call_cost + 1e-9)
        before = srv.total
        llm = LLMResource(base_url=srv.base_url, model="m", price_completion_per_1m=PRICE, max_budget_usd=cap,
                          env_prefix="TEACHER")
        for i in range(headroom + 1):
            with llm.session(open_store(db, **where)) as s:
                res = s.complete([ChatRequest(messages=[{"role": "user", "content": f"one more {i}"}],
                                              max_tokens=MAX_TOKENS)])
                status = s.budget_status()
            if res[0].status == "budget_exceeded":
                break
        assert srv.total - before <= headroom
        assert res[0].status == "budget_exceeded"
        assert "TEACHER_MAX_BUDGET_USD" in res[0].error and "across every run" in res[0].error
        assert status["remaining_usd"] == pytest.approx(max(0.0, cap - _spent(db, where)), abs=1e-6)


def test_cached_calls_cost_nothing_and_scopes_are_separate(tmp_path):
    db = str(tmp_path / "d.duckdb")
    call_cost = MAX_TOKENS * PRICE / 1e6
    with FakeOpenAIServer(responder=_answer) as srv:
        reqs = [ChatRequest(messages=[{"role": "user", "content": f"q{i}"}], max_tokens=MAX_TOKENS) for i in range(3)]
        llm = LLMResource(base_url=srv.base_url, model="m", price_completion_per_1m=PRICE,
                          max_budget_usd=3.5 * call_cost)
        with llm.session(open_store(db)) as s:
            assert all(r.ok for r in s.complete(reqs))
        with llm.session(open_store(db)) as s:  # all cached: no budget needed
            assert all(r.ok and r.cached for r in s.complete(reqs))
        more = [ChatRequest(messages=[{"role": "user", "content": "new"}], max_tokens=MAX_TOKENS)]
        with llm.session(open_store(db)) as s:
            assert s.complete(more)[0].status == "budget_exceeded"
        other = llm.model_copy(update={"budget_scope": "experiment-2"})
        with other.session(open_store(db)) as s:
            assert s.complete(more)[0].ok
        assert srv.total == 4


def test_generation_metadata_shows_spent_and_remaining(tmp_path, monkeypatch):
    import dagster as dg

    from distill_assets.defs.generation import raw_generations
    from distill_assets.defs.seeds import seed_prompts
    from resources.io_manager import DistillDuckDBIOManager

    db = str(tmp_path / "d.duckdb")
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path))
    with FakeOpenAIServer(responder=_answer) as srv:
        teacher = LLMResource(base_url=srv.base_url, model="m", price_completion_per_1m=PRICE, max_budget_usd=1.0)
        res = dg.materialize([seed_prompts, raw_generations], partition_key="support",
                             resources={"store": open_store(db), "io_manager": DistillDuckDBIOManager(database=db),
                                        "teacher": teacher})
    assert res.success
    mats = res.asset_materializations_for_node("raw_generations")
    budget = mats[0].metadata["budget"].value
    assert budget["max_usd"] == 1.0 and budget["spent_usd"] > 0
    assert budget["remaining_usd"] == pytest.approx(1.0 - budget["spent_usd"], abs=1e-6)
