"""Keys stay with their host: a judge on another host never receives the teacher's key, and URLs in metadata
and errors carry no credentials."""

import pytest

from distill_assets.defs.resources import llm_from_env
from distill_assets.lib.ledger import open_store
from resources.llm import ChatRequest
from resources.llm_types import LLMAuthError
from tests.fakes.openai_server import FakeOpenAIServer


def _ask(llm, store):
    llm = llm.process_config_and_initialize()  # resolves dg.EnvVar keys, as a Dagster run does
    with llm.session(store) as s:
        return s.complete([ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=8)])


@pytest.fixture
def two_hosts(monkeypatch):
    with FakeOpenAIServer(model="teacher") as teacher, FakeOpenAIServer(model="judge") as judge:
        monkeypatch.setenv("TEACHER_BASE_URL", teacher.base_url)
        monkeypatch.setenv("TEACHER_MODEL", "teacher")
        monkeypatch.setenv("TEACHER_API_KEY", "sk-teacher-secret")
        yield teacher, judge


def test_judge_on_another_host_never_gets_the_teacher_key(two_hosts, monkeypatch, tmp_path):
    teacher, judge = two_hosts
    monkeypatch.setenv("JUDGE_BASE_URL", judge.base_url)
    monkeypatch.setenv("JUDGE_MODEL", "judge")
    store = open_store(tmp_path / "d.duckdb")
    res = _ask(llm_from_env("JUDGE", "judge", fallback="TEACHER"), store)
    assert res[0].ok
    assert judge.total == 1
    assert not any("sk-teacher-secret" in h for h in judge.authorizations)
    assert teacher.total == 0


def test_judge_without_its_own_url_uses_the_teacher_host_and_key(two_hosts, tmp_path):
    teacher, _ = two_hosts
    res = _ask(llm_from_env("JUDGE", "judge", fallback="TEACHER"), open_store(tmp_path / "d.duckdb"))
    assert res[0].ok and teacher.authorizations["Bearer sk-teacher-secret"] == 1


def test_judge_with_its_own_key_sends_it(two_hosts, monkeypatch, tmp_path):
    _, judge = two_hosts
    monkeypatch.setenv("JUDGE_BASE_URL", judge.base_url)
    monkeypatch.setenv("JUDGE_API_KEY", "sk-judge")
    res = _ask(llm_from_env("JUDGE", "judge", fallback="TEACHER"), open_store(tmp_path / "d.duckdb"))
    assert res[0].ok and set(judge.authorizations) == {"Bearer sk-judge"}


def test_a_401_names_the_variable_to_set(monkeypatch, tmp_path):
    with FakeOpenAIServer(require_key="sk-right") as srv:
        monkeypatch.setenv("JUDGE_BASE_URL", srv.base_url)
        monkeypatch.setenv("JUDGE_MODEL", "judge")
        llm = llm_from_env("JUDGE", "judge", fallback="TEACHER")
        with pytest.raises(LLMAuthError, match="set JUDGE_API_KEY") as ei:
            _ask(llm, open_store(tmp_path / "d.duckdb"))
        assert "no API key" in str(ei.value)
        monkeypatch.setenv("JUDGE_API_KEY", "sk-wrong-one")
        with pytest.raises(LLMAuthError, match="JUDGE_API_KEY") as ei:
            _ask(llm_from_env("JUDGE", "judge", fallback="TEACHER"), open_store(tmp_path / "d2.duckdb"))
        assert "sk-wrong-one" not in str(ei.value)


def test_urls_in_metadata_have_no_credentials(monkeypatch):
    monkeypatch.setenv("TEACHER_BASE_URL", "https://user:pa55@teacher.example/v1?api-key=sk-q#frag")
    monkeypatch.setenv("TEACHER_MODEL", "m")
    desc = llm_from_env("TEACHER", "teacher").describe()
    assert desc["base_url"] == "https://teacher.example/v1"
    assert "pa55" not in str(desc) and "sk-q" not in str(desc)
