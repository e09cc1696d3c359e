import pytest

from tests.lib.training.tiny_model import session_dirs, trained_adapter


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return session_dirs(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory):
    return trained_adapter(tmp_path_factory)
