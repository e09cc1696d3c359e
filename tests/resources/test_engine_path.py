"""The in-process engine path (vLLM on a GPU machine) journals chunk by chunk and honours the shared budget.
The engine here is a stand-in with vLLM's call shape; the session code under test is the real one."""

from pathlib import Path

from distill_assets.lib.ledger import open_store
from resources.llm import ChatRequest, ChatResult, LLMResource
from resources.llm_session import LLMSession
from resources.llm_types import OK


class ChunkEngine:
    def __init__(self, journal_dir: Path, fail_after: int | None = None):
        self.calls, self.journal_dir, self.fail_after, self.seen = [], journal_dir, fail_after, 0

    def run(self, requests, session):
        if self.fail_after is not None and self.seen >= self.fail_after:
            raise KeyboardInterrupt("killed mid-batch")
        self.calls.append(len(requests))
        self.seen += len(requests)
        return [ChatResult(session.key(r), "engine", OK, "answer " * 4, "stop", 3, 4, 0.01,
                           session.cfg.cost(3, 4), 1) for r in requests]


def _reqs(n):
    return [ChatRequest(messages=[{"role": "user", "content": f"q{i}"}], max_tokens=4) for i in range(n)]


def _session(store, engine, **cfg):
    llm = LLMResource(backend="vllm", model="m", engine_chunk=4, **cfg)
    return LLMSession(llm, store, base_url=None, model="m", concurrency=4, run_id="r", logger=None, engine=engine)


def test_engine_results_are_recorded_per_chunk_and_survive_an_interrupt(tmp_path):
    store = open_store(tmp_path / "d.duckdb")
    engine = ChunkEngine(tmp_path, fail_after=8)
    s = _session(store, engine)
    try:
        s.complete(_reqs(10))
    except KeyboardInterrupt:
        pass
    finally:
        s.close()
    assert engine.calls == [4, 4]
    assert int(store.query_df("SELECT count(*) AS n FROM teacher_calls WHERE status = 'ok'")["n"][0]) == 8
    engine2 = ChunkEngine(tmp_path)
    s2 = _session(store, engine2)
    res = s2.complete(_reqs(10))
    s2.close()
    assert engine2.calls == [2] and all(r.ok for r in res)  # the 8 already answered are not asked again


def test_engine_path_checks_the_budget(tmp_path):
    store = open_store(tmp_path / "d.duckdb")
    engine = ChunkEngine(tmp_path)
    price = 1e6 / 100  # an 8-token estimate costs $0.08 or so
    s = _session(store, engine, price_completion_per_1m=price, max_budget_usd=0.3)
    res = s.complete(_reqs(10))
    s.close()
    sent = sum(engine.calls)
    assert 0 < sent < 10
    assert sum(r.status == "budget_exceeded" for r in res) == 10 - sent
