"""`clean_dataset`: the training set of one category, the rows that survived every filter, in chat format.

Columns: example_id, category, messages (JSON: system, user, assistant), split (train | validation), and the
provenance columns seed_id, method, difficulty, source, generation_id. Every row's messages must render with the
student chat template (SmolLM2's `apply_chat_template`); a row that does not is quarantined in the ledger.

Exported per partition, atomically, to $DISTILL_HOME/datasets/<category>/: train.jsonl, validation.jsonl
(`datasets.load_dataset("json", data_files=...)` rows: {"messages": [...], ...}) and data.parquet (all rows with
their split). The dataset version is the content hash of the table (ids.frame_version), also the data version.
"""

import hashlib
import json
import os
import tempfile
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from distill_assets.ids import frame_version
from distill_assets.partitions import CATEGORY
from distill_assets.settings import get_settings
from distill_assets.stages import annotate, kept, stage_metadata
from distill_assets.tasks import Category, load_tasks
from resources.store import DuckDBStore, table_exists

PROVENANCE = ["seed_id", "method", "difficulty", "source", "generation_id"]
COLUMNS = ["example_id", "category", "messages", "split"] + PROVENANCE


def split_of(example_ids: pd.Series, fraction: float) -> np.ndarray:
    """Deterministic split from a hash of example_id: a row's split never depends on the other rows, except
    that a partition of >= 5 rows with none below `fraction` sends its lowest-hash row to validation."""
    ids = example_ids.astype(str).tolist()
    u = np.array([int(hashlib.sha256(("split\x1f" + i).encode()).hexdigest()[:13], 16) / 16 ** 13 for i in ids])
    split = np.where(u < fraction, "validation", "train").astype(object)
    if len(ids) >= 5 and fraction > 0 and not (split == "validation").any():
        split[int(np.argmin(u))] = "validation"
    return split


def build_messages(row: pd.Series) -> list[dict]:
    msgs = None
    if isinstance(row.get("messages"), str):
        try:
            msgs = json.loads(row["messages"])
        except json.JSONDecodeError:
            msgs = None
    if not isinstance(msgs, list):
        msgs = [{"role": "user", "content": row.get("instruction")},
                {"role": "assistant", "content": row.get("response")}]
    system = [m for m in msgs if isinstance(m, dict) and m.get("role") == "system"]
    if not system and isinstance(row.get("system_prompt"), str) and row["system_prompt"]:
        msgs = [{"role": "system", "content": row["system_prompt"]}] + msgs
    return [{"role": m.get("role"), "content": m.get("content")} for m in msgs if isinstance(m, dict)]


def template_problem(msgs: list[dict], tokenizer) -> str | None:
    """None when the messages are system, user, assistant with strings and render with the chat template."""
    if [m["role"] for m in msgs] != ["system", "user", "assistant"]:
        return "not_system_user_assistant"
    if not all(isinstance(m["content"], str) and m["content"].strip() for m in msgs[1:]) or \
            not isinstance(msgs[0]["content"], str):
        return "empty_or_non_string_content"
    try:
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
    except Exception as e:  # jinja errors of any kind mean the student cannot train on it
        return f"chat_template_error: {type(e).__name__}: {e}"[:300]
    if not all(m["content"] in text for m in msgs):
        return "chat_template_lost_content"
    return None


def clean_frame(df: pd.DataFrame, category: Category, tokenizer=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(annotated input rows for the ledger, the clean dataset table)."""
    if tokenizer is None:
        from distill_assets.filters.quality import student_tokenizer

        tokenizer = student_tokenizer()
    msgs = [build_messages(r) for _, r in df.iterrows()]
    problems = [template_problem(m, tokenizer) for m in msgs]
    bad = [p is not None for p in problems]
    ev = [{"problem": p} if p else {"chat_template": "ok"} for p in problems]
    annotated = annotate(df, [not b for b in bad], [p or "" for p in problems], ev, quarantined=bad)
    good = annotated["keep"].to_numpy(dtype=bool)
    out = pd.DataFrame({
        "example_id": df["example_id"].astype(str).to_numpy()[good],
        "category": category.name,
        "messages": [json.dumps(m, ensure_ascii=False) for m, g in zip(msgs, good) if g],
    })
    out["split"] = split_of(out["example_id"], category.validation_fraction) if len(out) else []
    for c in PROVENANCE:
        out[c] = df[c].to_numpy()[good] if c in df.columns else None
    out = out[COLUMNS].sort_values("example_id").reset_index(drop=True)
    return annotated, out


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def jsonl_records(df: pd.DataFrame) -> list[dict]:
    recs = []
    for r in df.to_dict("records"):
        r = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
        r["messages"] = json.loads(r["messages"])
        recs.append(r)
    return recs


def export_dataset(df: pd.DataFrame, out_dir: Path, version: str) -> dict[str, Path]:
    """train.jsonl, validation.jsonl, data.parquet and manifest.json under out_dir, each replaced atomically."""
    paths = {}
    for split in ("train", "validation"):
        part = df[df["split"] == split]

        def w(tmp, part=part):
            with open(tmp, "w", encoding="utf-8") as f:
                for r in jsonl_records(part):
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")

        paths[split] = out_dir / f"{split}.jsonl"
        _atomic_write(paths[split], w)
    paths["parquet"] = out_dir / "data.parquet"
    _atomic_write(paths["parquet"], lambda tmp: df.to_parquet(tmp, index=False))
    manifest = {"dataset_version": version, "rows": int(len(df)),
                "splits": {s: int((df["split"] == s).sum()) for s in ("train", "validation")},
                "files": {k: p.name for k, p in paths.items()}}
    paths["manifest"] = out_dir / "manifest.json"
    _atomic_write(paths["manifest"], lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)))
    return paths


def combined_dataset(store: DuckDBStore, categories: list[str] | None = None) -> pd.DataFrame:
    """Every category's clean_dataset rows (the table the IO manager wrote), for training."""
    with store.connect() as conn:
        if not table_exists(conn, "clean_dataset"):
            return pd.DataFrame(columns=COLUMNS)
        where, params = "", []
        if categories:
            where = "WHERE category IN (" + ",".join("?" * len(categories)) + ")"
            params = list(categories)
        return conn.execute(f"SELECT * FROM clean_dataset {where} ORDER BY category, example_id",
                            params).df()


def combined_version(df: pd.DataFrame) -> str:
    return frame_version(df[COLUMNS]) if len(df) else frame_version(pd.DataFrame(columns=COLUMNS))


def export_combined(store: DuckDBStore, out_dir: str | Path | None = None,
                    categories: list[str] | None = None) -> tuple[dict[str, Path], str]:
    """All categories as one train/validation JSONL + parquet set; returns (paths, dataset version)."""
    df = combined_dataset(store, categories)
    version = combined_version(df)
    out = Path(out_dir) if out_dir else get_settings().home / "datasets" / "_combined"
    return export_dataset(df, out, version), version


@dg.asset(
    name="clean_dataset",
    ins={"decontaminated": dg.AssetIn("decontaminated")},
    partitions_def=CATEGORY,
    group_name="dataset",
    kinds={"duckdb", "pandas", "parquet"},
    code_version="dataset-v1",
    metadata={"partition_expr": "category"},
)
def clean_dataset(context: dg.AssetExecutionContext, store: DuckDBStore, decontaminated: pd.DataFrame):
    """The category's training examples: rows kept by every filter, as system/user/assistant chat messages that
    render with the student chat template, with a deterministic ~validation_fraction validation split and
    provenance (seed_id, method, difficulty, source, generation_id). Exported to
    $DISTILL_HOME/datasets/<category>/ (train.jsonl, validation.jsonl, data.parquet); version = content hash."""
    category = load_tasks().category(context.partition_key)
    rows = kept(decontaminated)
    annotated, out = clean_frame(rows, category) if len(rows) else (annotate(rows, [], [], []),
                                                                    pd.DataFrame(columns=COLUMNS))
    if len(annotated):
        store.record_lineage(annotated, stage="clean_dataset", category=category.name, run_id=context.run.run_id)
    else:
        store.replace_rows("lineage", pd.DataFrame(), "stage = ? AND category = ?", ["clean_dataset", category.name])
    version = frame_version(out)
    paths = export_dataset(out, get_settings().home / "datasets" / category.name, version)
    md = stage_metadata(store, annotated, category.name,
                        ["example_id", "method", "instruction", "response", "verdict", "reason"])
    md.update({
        "dataset_version": version,
        "rows": dg.MetadataValue.int(int(len(out))),
        "splits": dg.MetadataValue.json({s: int((out["split"] == s).sum()) for s in ("train", "validation")}),
        "path": dg.MetadataValue.path(str(paths["parquet"].parent)),
        "preview": dg.MetadataValue.md(out.head(5).to_markdown(index=False) if len(out) else "(no rows)"),
    })
    return dg.Output(out, metadata=md, data_version=dg.DataVersion(version))


assets = [clean_dataset]
