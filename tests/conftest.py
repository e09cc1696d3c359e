import os
from pathlib import Path

import pytest

from distill_assets.lib.ledger import open_store

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")


@pytest.fixture
def distill_home(tmp_path, monkeypatch) -> Path:
    """A fresh DISTILL_HOME for one test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DISTILL_HOME", str(home))
    return home


@pytest.fixture
def db_path(distill_home) -> str:
    return str(distill_home / "distill.duckdb")


@pytest.fixture
def store(db_path):

    return open_store(db_path)


@pytest.fixture
def fake_server():
    from tests.fakes.openai_server import FakeOpenAIServer

    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture
def duck_resources(db_path, store):
    from distill_assets.lib.ledger import open_io_manager

    return {"store": store, "io_manager": open_io_manager(db_path)}
