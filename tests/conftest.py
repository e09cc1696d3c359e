import os
import uuid
from pathlib import Path

import pytest

from distill_assets.lib.ledger import open_store
from resources import lake
from tests.fakes.postgres_server import PostgresServer, postgres_available

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


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server from the Debian package (initdb in a temp dir), stopped after the session;
    skips with the reason where the server binaries or the DuckLake extension packages are missing."""
    for ok, why in (postgres_available(), lake.ducklake_extensions_available()):
        if not ok:
            pytest.skip(why)
    with PostgresServer() as server:
        yield server


@pytest.fixture
def lake_location(postgres, tmp_path) -> dict:
    """A fresh DuckLake: its own Postgres database (catalog) and Parquet folder, as the store's fields."""
    dsn = postgres.new_database("lake_" + uuid.uuid4().hex[:10])
    return {"catalog": dsn, "data_path": str(tmp_path / "lake_data")}
