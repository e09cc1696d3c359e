"""Teacher token texts -> student ids, and clean_dataset rows -> their stored logprobs through lineage."""

import numpy as np
import pandas as pd
import pytest

from distill_assets.lib.generation.logprobs import LossyText, TokenIdMap, example_logprobs, vocab_hash
from distill_assets.lib.tokenizer import student_tokenizer
from resources.clock import utcnow
from resources.llm_logprobs import logprob_frame, logprob_row
from resources.llm_types import TokenLogprobs

TEXT = "The capital of France is Paris. 🇫🇷 naïve\n\n  code:\tx"


@pytest.fixture(scope="module")
def tok():
    return student_tokenizer()


@pytest.fixture(scope="module")
def tmap(tok):
    return TokenIdMap(tok)


def _llama_cpp_view(tok, ids):
    """What llama-cpp-python sends for these ids: each token's bytes decoded on its own, errors ignored."""
    from distill_assets.lib.generation.logprobs import token_bytes

    tb = token_bytes(tok)
    return [tb[i].decode("utf-8", errors="ignore") for i in ids], [tb[i] for i in ids]


def test_text_and_bytes_name_the_student_tokens(tok, tmap):
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    texts, raw = _llama_cpp_view(tok, ids)
    assert b"".join(raw).decode() == TEXT  # the bytes of a byte-level BPE are exact
    by_bytes = [tmap.id_of(t, b) for t, b in zip(texts, raw)]
    by_text = [tmap.id_of(t, None) for t in texts]
    assert by_bytes == ids  # OpenAI / vLLM send bytes: every token has its id
    # llama.cpp sends text only: the flag's pieces (parts of 4-byte characters) come out as "" (no id) or as
    # their readable part (" " names the space token); every other token is named exactly
    wrong = [k for k, (i, j) in enumerate(zip(ids, by_text)) if i != j]
    assert 0 < len(wrong) <= 6 and by_text.count(-1) >= 1
    assert [texts[k] for k in wrong if by_text[k] != -1] == [" "]
    lossy = LossyText.of(tok)
    assert lossy.partial[[ids[k] for k in wrong]].all()
    assert lossy.same_as_sent(np.array(by_text), np.array(ids)).all()  # training accepts exactly these
    assert not lossy.same_as_sent(np.array(by_text[1:] + [0]), np.array(ids)).all()


def test_encode_keeps_the_best_k_and_pads(tok, tmap):
    paris = tmap.id_of(" Paris", None)
    lp = TokenLogprobs([" Paris", ""], [None, None], [-0.2, -1.0],
                       [[(" Paris", None, -0.2), (" London", None, -2.0), (" Rome", None, -3.0)], [("", None, -1.0)]])
    ids, lps, unmapped = tmap.encode(lp, 2)
    assert ids.dtype == np.int32 and lps.dtype == np.float16 and ids.shape == (2, 3)
    assert ids[0].tolist() == [paris, paris, tmap.id_of(" London", None)]  # the third alternative is past k
    assert ids[1].tolist() == [-1, -1, -1] and unmapped == 1
    assert lps[1, 2] == -np.inf and abs(float(lps[0, 2]) + 2.0) < 1e-2


def test_vocab_hash_tells_tokenizers_apart(tok, tmap):
    from transformers import AutoTokenizer

    assert tmap.name == vocab_hash(tok)
    other = AutoTokenizer.from_pretrained(tok.name_or_path) if tok.name_or_path else None
    if other is not None:
        other.add_tokens(["<zz_new_token>"])
        assert vocab_hash(other) != tmap.name


def test_clean_rows_find_their_logprobs_through_lineage(store, tmap):
    lp = TokenLogprobs(["Hi", "!"], [None, None], [-0.1, -0.3], [[("Hi", None, -0.1)], [("!", None, -0.3)]])
    now = utcnow().isoformat()
    frame = logprob_frame([{"_logprobs": logprob_row("ck1", "teach", lp, 1, tmap, now)}])
    store.insert_df("teacher_logprobs", frame)
    store.insert_df("raw_generations", pd.DataFrame({"generation_id": ["g1", "g2"], "call_key": ["ck1", "ck2"]}))
    clean = pd.DataFrame({"example_id": ["e1", "e2"], "generation_id": ["g1", "g2"]})
    got = example_logprobs(store, clean)
    assert set(got) == {"e1"}  # e2's call has no logprobs
    t = got["e1"]
    assert (t.k, t.model, t.tokenizer) == (1, "teach", tmap.name)
    assert t.ids[:, 0].tolist() == [tmap.id_of("Hi", None), tmap.id_of("!", None)]
    with pytest.raises(Exception, match="generation_id"):
        example_logprobs(store, clean.drop(columns="generation_id"))


def test_the_task_file_asks_answers_only_for_logprobs(tmp_path):
    from distill_assets.lib.errors import InputErrors
    from distill_assets.lib.generation.plan import initial_steps
    from distill_assets.lib.records import load_seed_file
    from distill_assets.lib.tasks import parse_task_file

    (tmp_path / "s.jsonl").write_text('{"prompt": "Say hi"}\n{"prompt": "Say bye"}\n')
    (tmp_path / "e.jsonl").write_text('{"prompt": "Say what"}\n')
    head = "categories:\n  - name: t\n    description: d\n    system_prompt: s\n    seeds: s.jsonl\n    eval: e.jsonl\n"
    (tmp_path / "t.yaml").write_text(head + "    methods: {response: 2, evol_instruct: 1}\n    generation: {logprobs: 5}\n")
    cat = parse_task_file(tmp_path / "t.yaml").categories[0]
    steps = initial_steps(cat, load_seed_file(cat.seeds, cat))
    answers = [s.request for s in steps if s.kind == "answer"]
    assert answers and {r.top_logprobs for r in answers} == {5}
    assert {r.params()["top_logprobs"] for r in answers} == {5}
    assert all(s.request.top_logprobs is None for s in steps if s.kind != "answer")  # writers are not trained on
    (tmp_path / "t.yaml").write_text(head + "    generation: {logprobs: 0}\n")
    assert parse_task_file(tmp_path / "t.yaml").categories[0].generation.logprobs == 0
    (tmp_path / "t.yaml").write_text(head + "    generation: {logprobs: 50}\n")
    with pytest.raises(InputErrors) as exc:
        parse_task_file(tmp_path / "t.yaml")
    assert exc.value.errors[0].field == "categories.0.generation.logprobs" and exc.value.errors[0].line == 7
