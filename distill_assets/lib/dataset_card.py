"""The generated dataset card (README.md) of an exported dataset: every number read from the ledger.

The YAML header is what the Hugging Face Hub and `datasets` read: license (the task file's `license`), configs
(one per category, and `all` as the default), split sizes, tags. The body says where the data came from: the
teacher and judge models, the generation methods, the filter funnel per stage from the `lineage` table (rows
in, kept, dropped, quarantined, and the main drop reasons), the contamination results (rows the decontaminate
stage dropped, and a re-check of the exported rows against the held-out eval set), the seed provenance, and
the distill version. `card_facts` gathers the numbers once; `render_card` only formats them, so the card and
card.json cannot disagree.
"""

from __future__ import annotations

import importlib.metadata
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import yaml

from distill_assets.lib.contamination import find_contamination, flag_rows, held_out, training_texts
from distill_assets.lib.conversation import loads
from distill_assets.lib.stages import funnel
from distill_assets.lib.tasks import Category, TaskFile
from resources.store import DuckDBStore


def distill_version() -> str:
    try:
        return importlib.metadata.version("distill")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _counts(s: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in s.fillna("(none)").value_counts().sort_index().items()}


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def _relative(path: str, base: Path | None) -> str:
    """A seed file as the task file names it (relative to its folder), so the card shows no local paths."""
    try:
        return Path(path).relative_to(base).as_posix() if base else path
    except ValueError:
        return path


def _by(store: DuckDBStore, sql: str, params: list) -> pd.DataFrame:
    return store.query_df(sql, params)


def _category_facts(store: DuckDBStore, cat: Category, part: pd.DataFrame, files: dict, encode,
                    base: Path | None = None) -> dict:
    name = cat.name
    gen_ids = part["generation_id"].dropna().astype(str).tolist()
    teachers = (_by(store, "SELECT teacher_model, count(*) AS n FROM raw_generations "
                           "WHERE list_contains(?, generation_id) GROUP BY ALL ORDER BY 1", [gen_ids])
                if store.table_exists("raw_generations") else pd.DataFrame(columns=["teacher_model", "n"]))
    judges = (_by(store, "SELECT DISTINCT model FROM teacher_calls WHERE role = 'judge' AND category = ? "
                         "ORDER BY 1", [name])["model"].tolist() if store.table_exists("teacher_calls") else [])
    fun = funnel(store, name)
    drops = (_by(store, "SELECT stage, reason, count(*) AS n FROM lineage WHERE category = ? AND verdict <> 'kept' "
                        "GROUP BY ALL ORDER BY stage, n DESC, reason", [name]) if store.table_exists("lineage")
             else pd.DataFrame(columns=["stage", "reason", "n"]))
    seeds = (_by(store, "SELECT source, source_file FROM seed_prompts WHERE category = ?", [name])
             if store.table_exists("seed_prompts") else pd.DataFrame(columns=["source", "source_file"]))
    ev = (_by(store, "SELECT * FROM eval_set WHERE category = ?", [name]) if store.table_exists("eval_set")
          else pd.DataFrame())
    evalset = held_out(ev, cat, store)
    texts = training_texts(part)
    hits = flag_rows(texts, find_contamination(texts, evalset, cat.contamination, encode), cat.contamination)
    turns = part["messages"].map(lambda m: sum(x.get("role") == "assistant" for x in loads(m) or []))
    decon = fun[fun["stage"] == "decontaminated"] if not fun.empty else fun
    return {
        "rows": int(len(part)),
        "splits": {s: int((part["split"] == s).sum()) for s in ("train", "validation")},
        "dataset_version": files.get("dataset_version"),
        "files": {s: files[s] for s in ("train", "validation") if s in files},
        "verify": cat.verify,
        "tools": [t.function.name for t in cat.tools or []],
        "conversation_turns": cat.conversation_turns,
        "assistant_turns": _counts(turns.astype(str)),
        "methods": _counts(part["method"]),
        "sources": _counts(part["source"]),
        "difficulty": _counts(part["difficulty"]),
        "teacher_models": {str(r.teacher_model): int(r.n) for r in teachers.itertuples()},
        "judge_models": [str(j) for j in judges],
        "judged": bool(cat.filters.judge_enabled),
        "funnel": [{"stage": r.stage, "rows_in": int(r.rows_in), "kept": int(r.kept), "dropped": int(r.dropped),
                    "quarantined": int(r.quarantined)} for r in fun.itertuples()] if not fun.empty else [],
        "drop_reasons": {st: {str(r.reason): int(r.n) for r in g.itertuples()} for st, g in drops.groupby("stage")},
        "contamination": {
            "decontaminate_dropped": int(decon["dropped"].sum()) if len(decon) else 0,
            "recheck_rows": int(len(texts)), "recheck_contaminated": int(hits["contaminated"].sum()),
            "eval_items": int(len(evalset)),
            "rules": ["13-gram", "8-gram"] + (["embedding"] if encode is not None else []),
        },
        "seeds": {"rows": int(len(seeds)), "by_source": _counts(seeds["source"]),
                  "files": sorted({_relative(str(f), base) for f in seeds["source_file"].dropna()})},
    }


def card_facts(store: DuckDBStore, tasks: TaskFile, df: pd.DataFrame, files: dict[str, dict], encode) -> dict:
    base = tasks.path.parent if tasks.path else None
    cats = {c.name: _category_facts(store, c, df[df["category"] == c.name], files[c.name], encode, base)
            for c in tasks.categories if c.name in files}
    return {
        "name": tasks.name, "license": tasks.license, "task_file": tasks.path.name if tasks.path else None,
        "distill_version": distill_version(), "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": int(sum(c["rows"] for c in cats.values())),
        "splits": {s: int(sum(c["splits"][s] for c in cats.values())) for s in ("train", "validation")},
        "categories": cats,
        "empty_categories": [n for n in tasks.names if n not in files],
    }


def _configs(facts: dict) -> list[dict]:
    cats = facts["categories"]
    out = [{"config_name": "all", "default": True, "data_files": [
        {"split": s, "path": f"data/*/{s}.parquet"} for s in ("train", "validation")
        if any(s in c["files"] for c in cats.values())]}]
    for name, c in cats.items():
        out.append({"config_name": name, "data_files": [{"split": s, "path": c["files"][s]["parquet"]}
                                                        for s in ("train", "validation") if s in c["files"]]})
    return out


def header(facts: dict) -> dict:
    info = [{"config_name": n, "splits": [{"name": s, "num_examples": c["splits"][s]}
                                          for s in ("train", "validation") if s in c["files"]]}
            for n, c in facts["categories"].items()]
    return {"license": facts["license"], "language": ["en"], "task_categories": ["text-generation"],
            "tags": ["synthetic", "distillation", "distill"], "size_categories": [_size_category(facts["rows"])],
            "pretty_name": facts["name"], "configs": _configs(facts), "dataset_info": info}


def _table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _inline(d: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in d.items()) or "none"


def render_card(facts: dict) -> str:
    head = yaml.safe_dump(header(facts), sort_keys=False, allow_unicode=True)
    out = [f"---\n{head}---", f"# {facts['name']}",
           f"Generated by distill {facts['distill_version']} on {facts['created_at']} from the task file "
           f"`{facts['task_file']}`: {facts['rows']} examples ({facts['splits']['train']} train, "
           f"{facts['splits']['validation']} validation) in {len(facts['categories'])} configs, one per category; "
           "the default config `all` holds every category. Every example is a teacher model's answer that "
           "passed every filter below; row-level lineage is in the project's DuckDB ledger (`distill lineage why "
           "<example_id>`).",
           f"License: `{facts['license']}` (the task file's `license`).",
           "Loading: `datasets.load_dataset(<this folder>)` or `load_dataset(<folder>, '<category>')`; the same "
           "rows as chat JSONL are under `jsonl/`. Tool calls are in OpenAI form (`tool_calls`, arguments as JSON "
           "text); `tools` holds the category's function schemas as JSON text."]
    if facts["empty_categories"]:
        out.append("Categories with no example that passed every filter (no config): "
                   + ", ".join(f"`{c}`" for c in facts["empty_categories"]) + ".")
    for name, c in facts["categories"].items():
        judges = ", ".join(c["judge_models"]) or ("disabled (filters.judge_enabled: false)" if not c["judged"]
                                                  else "none recorded")
        out += [f"## {name}",
                f"{c['rows']} examples ({c['splits']['train']} train, {c['splits']['validation']} validation), "
                f"dataset version `{c['dataset_version']}`, verification `{c['verify']}`"
                + (f", tools: {', '.join(f'`{t}`' for t in c['tools'])}" if c["tools"] else "") + ".",
                "\n".join([
                    f"- Teacher model(s): {_inline(c['teacher_models'])}; judge model(s): {judges}",
                    f"- Generation methods: {_inline(c['methods'])}; assistant turns per example: "
                    f"{_inline(c['assistant_turns'])} (conversation_turns {c['conversation_turns']})",
                    f"- Example sources: {_inline(c['sources'])}; difficulty: {_inline(c['difficulty'])}",
                    f"- Seeds: {c['seeds']['rows']} ({_inline(c['seeds']['by_source'])}) from "
                    f"{', '.join(f'`{f}`' for f in c['seeds']['files']) or 'no seed file recorded'}"]),
                "Filter funnel (lineage):\n\n" + _table(c["funnel"], ["stage", "rows_in", "kept", "dropped",
                                                                       "quarantined"])]
        if c["drop_reasons"]:
            out.append("Drop reasons: " + "; ".join(f"{st}: {_inline(r)}" for st, r in c["drop_reasons"].items()))
        k = c["contamination"]
        out.append(f"Contamination: the decontaminate stage dropped {k['decontaminate_dropped']} row(s); a "
                   f"re-check of the {k['recheck_rows']} exported rows against the {k['eval_items']} held-out eval "
                   f"items ({', '.join(k['rules'])}) found {k['recheck_contaminated']} contaminated.")
    return "\n\n".join(out) + "\n"
