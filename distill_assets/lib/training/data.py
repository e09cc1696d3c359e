"""clean_dataset rows -> trl prompt/completion records, the train/validation split, and the dataset version.

Loss is on assistant tokens only: each conversation becomes a conversational prompt-completion pair (prompt = every
turn before the final assistant turn, completion = that assistant turn), and trl masks the prompt (labels -100).
This works with any chat template; trl's `assistant_only_loss` instead needs `{% generation %}` markers, which
SmolLM2's ChatML template lacks and trl cannot patch in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pandas as pd

from distill_assets.lib import ledger
from distill_assets.lib.errors import InputError
from distill_assets.lib.split import split_of
from resources.store import DuckDBStore


def conversation_to_prompt_completion(messages_json: str, where: str = "clean_dataset") -> dict:
    try:
        msgs = json.loads(messages_json) if isinstance(messages_json, str) else list(messages_json)
    except json.JSONDecodeError as e:
        raise InputError(where, None, "messages", f"not valid JSON: {e}") from None
    if not msgs or not isinstance(msgs, list):
        raise InputError(where, None, "messages", "empty conversation")
    for m in msgs:
        if not isinstance(m, dict) or "role" not in m or not isinstance(m.get("content"), str):
            raise InputError(where, None, "messages", f"each message needs role and string content, got {m!r:.80}")
    if msgs[-1]["role"] != "assistant":
        raise InputError(where, None, "messages", "the last message must be the assistant's answer")
    if not msgs[-1]["content"].strip():
        raise InputError(where, None, "messages", "empty assistant answer")
    prompt = [{"role": m["role"], "content": m["content"]} for m in msgs[:-1]]
    if not any(m["role"] == "user" for m in prompt):
        raise InputError(where, None, "messages", "no user turn before the assistant answer")
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": msgs[-1]["content"]}]}


def _row_fractions(df: pd.DataFrame, val_fraction: float | Mapping[str, float]) -> float | np.ndarray:
    """One validation fraction, or each row's category's fraction from the task file."""
    if not isinstance(val_fraction, Mapping):
        return float(val_fraction)
    if "category" not in df.columns:
        raise InputError("clean_dataset", None, "category", "missing: needed to look up validation_fraction")
    out = []
    for i, cat in enumerate(df["category"].astype(str), start=1):
        if cat not in val_fraction:
            raise InputError("clean_dataset", i, "category", f"{cat!r} is not a category of the task file")
        out.append(float(val_fraction[cat]))
    return np.array(out)


def split_dataset(df: pd.DataFrame, val_fraction: float | Mapping[str, float]
                  ) -> tuple[list[dict], list[dict], list[str]]:
    """(train records, validation records, notes). Uses clean_dataset's `split` column. When it holds no
    validation rows, the train rows get the same example_id-hash split clean_dataset uses (lib/split.py), with
    `val_fraction` (one number, or {category: validation_fraction}) and at least one validation row."""
    notes: list[str] = []
    if df.empty:
        raise ValueError("clean_dataset is empty: nothing to train on")
    recs = []
    for i, row in enumerate(df.itertuples(index=False)):
        try:
            pc = conversation_to_prompt_completion(row.messages)
        except InputError as e:
            raise InputError("clean_dataset", i + 1, "messages", f"example {row.example_id}: {e.message}") from None
        recs.append({**pc, "example_id": str(row.example_id),
                     "split": str(getattr(row, "split", "train") or "train")})
    if not any(r["split"] == "validation" for r in recs):
        is_train = [r["split"] == "train" for r in recs]
        if sum(is_train) < 2:
            raise ValueError("clean_dataset needs at least 2 examples (train + validation)")
        fractions = _row_fractions(df, val_fraction)
        if isinstance(fractions, np.ndarray):
            fractions = fractions[np.array(is_train)]
        train_ids = pd.Series([r["example_id"] for r, t in zip(recs, is_train) if t])
        assigned = dict(zip(train_ids, split_of(train_ids, fractions, min_rows=2)))
        for r in recs:
            r["split"] = assigned.get(r["example_id"], r["split"]) if r["split"] == "train" else r["split"]
        k = sum(r["split"] == "validation" for r in recs)
        if not k:
            raise ValueError("clean_dataset has no validation rows and validation_fraction is 0: training "
                             "evaluates every epoch and needs at least one validation example")
        notes.append(f"no validation split in clean_dataset: held out {k} train examples by the example_id hash "
                     "split")
    train = [r for r in recs if r["split"] == "train"]
    val = [r for r in recs if r["split"] == "validation"]
    if not train:
        raise ValueError("clean_dataset has no train rows")
    strip = lambda rs: [{"prompt": r["prompt"], "completion": r["completion"], "example_id": r["example_id"]}
                        for r in rs]
    return strip(train), strip(val), notes


def register_dataset_version(store: DuckDBStore, df: pd.DataFrame, version: str, run_id: str) -> str:
    """The dataset version as an `artifacts` row, so adapter -> dataset -> examples (lineage table) is joinable."""
    artifact_id = f"dataset:{version}"
    counts = df.groupby("split").size().to_dict() if "split" in df.columns else {"train": len(df)}
    cats = sorted(df["category"].astype(str).unique().tolist()) if "category" in df.columns else []
    ledger.register_artifact(
        store,
        artifact_id=artifact_id, asset="clean_dataset", kind="dataset",
        path=f"duckdb:{store.database}#clean_dataset", sha256=version, bytes=None, parent_artifact_id=None,
        dataset_version=version, run_id=run_id,
        metadata={"rows": len(df), "splits": counts, "categories": cats,
                  "examples": "lineage.example_id where stage = 'clean_dataset'",
                  "example_ids": sorted(df["example_id"].astype(str).tolist())},
    )
    return artifact_id
