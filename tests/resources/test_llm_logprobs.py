"""Teacher logprobs over the OpenAI protocol: asked for, parsed once, and journaled with their call."""

import math

import numpy as np
import pytest

from resources.clock import utcnow
from resources.llm import ChatRequest, LLMResource
from resources.llm_journal import _Journal, replay_journals
from resources.llm_logprobs import JOURNAL_KEY, decode_arrays, logprob_row
from resources.llm_types import TokenLogprobs, parse_logprobs
from tests.fakes.openai_server import FakeOpenAIServer


class WordMap:
    """A token map over a fixed word vocabulary: what the session needs from a tokenizer, and nothing more."""

    name = "words-v1"
    vocab = {"Here": 0, " is": 1, " the": 2, " answer": 3, ".": 4, " a": 5, " an": 6}

    def encode(self, lp: TokenLogprobs, k: int):
        ids = np.full((len(lp), k + 1), -1, dtype=np.int32)
        lps = np.full((len(lp), k + 1), -np.inf, dtype=np.float16)
        for i, tok in enumerate(lp.tokens):
            ids[i, 0], lps[i, 0] = self.vocab.get(tok, -1), lp.logprobs[i]
            for j, (t, _, v) in enumerate(lp.top[i][:k]):
                ids[i, j + 1], lps[i, j + 1] = self.vocab.get(t, -1), v
        return ids, lps, int((ids[:, 0] < 0).sum())


WORDS = ["Here", " is", " the", " answer", "."]


def openai_logprobs(body: dict, content: str) -> dict:
    """OpenAI's shape: token, logprob, bytes, and top_logprobs best first (the sampled word first here)."""
    k = body["top_logprobs"]
    alts = [" a", " an", "."]
    return {"content": [{"token": w, "logprob": -0.1, "bytes": list(w.encode()),
                         "top_logprobs": [{"token": w, "logprob": -0.1, "bytes": list(w.encode())}]
                         + [{"token": a, "logprob": -3.0 - j, "bytes": list(a.encode())} for j, a in enumerate(alts)][:k - 1]}
                        for w in WORDS], "refusal": None}


def _llm(srv):
    return LLMResource(base_url=srv.base_url, model="fake", request_timeout_s=2.0, backoff_initial_s=0.02,
                       max_retries=2)


def _req(k, text="q"):
    return ChatRequest([{"role": "user", "content": text}], max_tokens=16, top_logprobs=k)


def test_logprobs_are_asked_stored_and_cached(store):
    with FakeOpenAIServer(responder=lambda b: "".join(WORDS), logprober=openai_logprobs, keep_bodies=True) as srv:
        with _llm(srv).session(store, token_map=WordMap()) as s:
            plain, asked = s.complete([_req(None), _req(3)])
        # the two calls go out concurrently, so the server may see them in either order
        plain_body = next(b for b in srv.bodies if "top_logprobs" not in b)
        asked_body = next(b for b in srv.bodies if "top_logprobs" in b)
        assert "logprobs" not in plain_body and (asked_body["logprobs"], asked_body["top_logprobs"]) == (True, 3)
        assert plain.call_key != asked.call_key  # the params differ, so does the cache key
        assert asked.logprobs.tokens == WORDS and plain.logprobs is None
        rows = store.query_df("SELECT * FROM teacher_logprobs")
        assert rows["call_key"].tolist() == [asked.call_key]
        r = rows.iloc[0]
        assert (r["k"], r["n_tokens"], r["tokenizer"], r["unmapped"], r["model"]) == (3, 5, "words-v1", 0, "fake")
        ids, lps = decode_arrays(r["token_ids"], r["logprobs"], r["n_tokens"], r["k"])
        assert ids.dtype == np.int32 and lps.dtype == np.float16 and ids.shape == (5, 4)
        assert ids[:, 0].tolist() == [0, 1, 2, 3, 4] and ids[0, 1:].tolist() == [0, 5, 6]
        assert np.allclose(lps[0].astype(float), [-0.1, -0.1, -3.0, -4.0], atol=1e-2)
        before = srv.total
        with _llm(srv).session(store, token_map=WordMap()) as s:
            again = s.complete([_req(3)])[0]
        assert again.cached and srv.total == before
        assert store.query_df("SELECT count(*) AS n FROM teacher_logprobs")["n"][0] == 1


def test_asking_without_a_token_map_is_refused(store):
    with FakeOpenAIServer() as srv, _llm(srv).session(store) as s:
        with pytest.raises(ValueError, match="token map"):
            s.complete([_req(5)])
        assert srv.total == 0


def test_a_server_without_logprobs_answers_ok_and_is_counted(store, caplog):
    with FakeOpenAIServer() as srv, _llm(srv).session(store, token_map=WordMap()) as s:
        res = s.complete([_req(2, "a"), _req(2, "b")])
        assert all(r.ok and r.logprobs is None for r in res) and s.stats["no_logprobs"] == 2
    assert store.query_df("SELECT count(*) AS n FROM teacher_logprobs")["n"][0] == 0
    assert "does not return them" in caplog.text


def test_llama_cpp_shape_parses():
    """llama-cpp-python 0.3.x: `bytes: null`, part-of-a-character tokens as "", the sampled token in its list."""
    choice = {"logprobs": {"content": [
        {"token": "", "logprob": -0.5, "bytes": None,
         "top_logprobs": [{"token": "L", "logprob": -2.0, "bytes": None}, {"token": "", "logprob": -0.5, "bytes": None}]},
        {"token": " Paris", "logprob": -9999.0, "bytes": None, "top_logprobs": []}], "refusal": None}}
    lp = parse_logprobs(choice)
    assert lp.tokens == ["", " Paris"] and lp.token_bytes == [None, None]
    assert [t[0] for t in lp.top[0]] == ["", "L"]  # best first
    assert lp.logprobs[1] == -math.inf  # OpenAI's -9999 sentinel: no mass
    assert parse_logprobs({"logprobs": None}) is None and parse_logprobs({}) is None
    with pytest.raises(KeyError):
        parse_logprobs({"logprobs": {"content": [{"logprob": -1.0}]}})


def test_a_dead_sessions_journal_replays_the_logprobs_too(store, tmp_path):
    lp = TokenLogprobs(WORDS, [None] * 5, [-0.1] * 5, [[(w, None, -0.1)] for w in WORDS])
    created = utcnow().isoformat()
    call = {"call_key": "k1", "model": "fake", "role": "teacher", "status": "ok", "response": "".join(WORDS),
            "created_at": created, JOURNAL_KEY: logprob_row("k1", "fake", lp, 2, WordMap(), created)}
    j = _Journal(tmp_path / "journal")
    j.append(call)
    j.close(delete=False)  # as a kill -9 leaves it
    assert replay_journals(store, tmp_path / "journal") == 1
    assert store.query_df("SELECT status FROM teacher_calls")["status"].tolist() == ["ok"]
    row = store.query_df("SELECT * FROM teacher_logprobs").iloc[0]
    ids, _ = decode_arrays(row["token_ids"], row["logprobs"], row["n_tokens"], row["k"])
    assert row["call_key"] == "k1" and ids[:, 0].tolist() == [0, 1, 2, 3, 4] and ids[:, 2].tolist() == [-1] * 5
