"""The full quickstart: materialize the whole graph in-process on the embedded defaults, stage by stage.

Runs go to a persistent Dagster instance (`$DAGSTER_HOME`, default `$DISTILL_HOME/dagster_home`) so that
`distill ui` (or `DAGSTER_HOME=... dagster dev -w workspace.yaml`) shows every run, materialization and check
afterwards. The stages are chosen by asset group, never by a hard-coded asset list, so the quickstart follows
whatever the Definitions hold:

1. every category partition of the per-category assets (seeds -> generation -> filtering -> dataset, plus
   partitioned evaluation assets such as eval_set), one run per partition, with their checks;
2. the unpartitioned assets (training -> export -> evaluation), one run, with their checks.

Time per stage is measured from the runs' own step events, so it is what Dagster recorded, not a guess.
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from distill_assets import definitions
from distill_assets.lib.ledger import open_store
from distill_assets.lib.settings import dagster_home as dagster_home_env
from distill_assets.lib.settings import env, get_settings, log_level
from distill_assets.lib.tasks import load_tasks
from distill_assets.quickstart_config import QUICKSTART_OPS_CONFIG

# The stage groups, in graph order. "production" is the feedback loop fed by reported failures; the quickstart
# has none, so it is not part of a fresh run.
STAGE_GROUPS = ("seeds", "generation", "filtering", "dataset", "training", "export", "evaluation")

DAGSTER_YAML = """\
# Written by distill for a local instance; see docs/scaleout.md for the Kubernetes/Postgres one.
telemetry:
  enabled: false
nux:
  enabled: false
concurrency:
  runs:
    # 2 CPU cores: more parallel runs only fight over them and over the DuckDB writer lock.
    max_concurrent_runs: 2
"""


class StageFailed(RuntimeError):
    """A Dagster run of the quickstart or of `distill materialize` did not succeed."""


# ---------------------------------------------------------------------------------------------------------------
# instance
# ---------------------------------------------------------------------------------------------------------------
def dagster_home() -> Path:
    """The persistent DAGSTER_HOME: `$DAGSTER_HOME`, else `$DISTILL_HOME/dagster_home` (exported for children)."""
    home = Path(dagster_home_env() or (get_settings().home / "dagster_home")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    if not cfg.exists():
        # Telemetry off: the machines this runs on often have no network, and a user never asked for it.
        cfg.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def get_instance() -> dg.DagsterInstance:
    dagster_home()
    return dg.DagsterInstance.get()


# ---------------------------------------------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------------------------------------------
def load_defs() -> dg.Definitions:
    """The code location's Definitions; `definitions.defs` is lazy, so the defs/ folder loads only here."""
    return definitions.defs()


def category_names() -> list[str]:
    return list(load_tasks().names)


def _is_category_partitioned(graph: Any, key: dg.AssetKey) -> bool:
    pdef = graph.get(key).partitions_def
    # the category partitions are the task file's categories (defs/partitions.py builds them from it)
    return pdef is not None and set(pdef.get_partition_keys()) == set(category_names())


def split_by_partitioning(defs: dg.Definitions, keys: Iterable[dg.AssetKey]) -> tuple[list, list, list]:
    """(category-partitioned, unpartitioned, other) asset keys, each in topological order."""
    graph = defs.resolve_asset_graph()
    order = {k: i for i, k in enumerate(graph.toposorted_asset_keys)}
    part, unpart, other = [], [], []
    for key in sorted(set(keys), key=lambda k: order.get(k, 0)):
        node = graph.get(key)
        if not node.is_materializable:
            continue
        if node.partitions_def is None:
            unpart.append(key)
        elif _is_category_partitioned(graph, key):
            part.append(key)
        else:
            other.append(key)
    return part, unpart, other


def group_of(defs: dg.Definitions, key: dg.AssetKey) -> str:
    return defs.resolve_asset_graph().get(key).group_name or "default"


def stage_keys(defs: dg.Definitions, groups: Iterable[str] = STAGE_GROUPS) -> list[dg.AssetKey]:
    graph = defs.resolve_asset_graph()
    wanted = set(groups)
    return [k for k in graph.toposorted_asset_keys
            if graph.get(k).is_materializable and (graph.get(k).group_name or "default") in wanted]


def resolve_selection(defs: dg.Definitions, select: str | None) -> list[dg.AssetKey]:
    """`a,b,c` (asset names) or Dagster's selection syntax (`group:seeds`, `key:raw_generations+`, ...)."""
    graph = defs.resolve_asset_graph()
    known = {k.to_user_string(): k for k in graph.get_all_asset_keys()}
    if not select:
        return [k for k in graph.toposorted_asset_keys if graph.get(k).is_materializable]
    names = [s.strip() for s in select.split(",") if s.strip()]
    if all(n.replace("/", "").replace("_", "").isalnum() for n in names):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise LookupError(f"unknown asset(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return [known[n] for n in names]
    try:
        keys = dg.AssetSelection.from_string(select).resolve(graph)
    except Exception as e:  # the parser's own message says what is wrong with the expression
        raise LookupError(f"bad asset selection {select!r}: {str(e).splitlines()[0]}") from None
    if not keys:
        raise LookupError(f"asset selection {select!r} matches no asset")
    return list(keys)


# ---------------------------------------------------------------------------------------------------------------
# execution
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class RunSummary:
    label: str
    run_id: str
    success: bool
    wall_s: float
    step_s: dict[str, float] = field(default_factory=dict)  # asset/check step key -> seconds
    failure: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # asset -> reason (e.g. "needs CUDA")


def _step_seconds(instance: Any, run_id: str) -> dict[str, float]:
    """Seconds per step from the stored event log (DagsterEvents carry no timestamps; log entries do)."""
    T = dg.DagsterEventType
    starts, out = {}, {}
    for entry in instance.all_logs(run_id, of_type={T.STEP_START, T.STEP_SUCCESS, T.STEP_FAILURE}):
        ev = entry.dagster_event
        if ev is None or ev.step_key is None:
            continue
        if ev.event_type == T.STEP_START:
            starts[ev.step_key] = entry.timestamp
        elif ev.step_key in starts:
            out[ev.step_key] = out.get(ev.step_key, 0.0) + (entry.timestamp - starts.pop(ev.step_key))
    return out


def _failure_message(result: Any) -> str:
    # A blocking check that did not pass says why in its own description: show that, not the wrapper error.
    for ev in result.all_events:
        if ev.event_type_value == "ASSET_CHECK_EVALUATION":
            d = ev.event_specific_data
            if not d.passed and getattr(d.severity, "value", "ERROR") == "ERROR":
                key = d.asset_check_key
                why = (d.description or "").strip().splitlines()
                return (f"blocking check {key.asset_key.to_user_string()}:{key.name} failed"
                        + (f": {why[0]}" if why else ""))
    for ev in result.all_events:
        if ev.event_type_value == "STEP_FAILURE":
            err = ev.step_failure_data.error
            # The user-code error is the cause of the Dagster wrapper; show the innermost message line.
            while err is not None and err.cause is not None:
                err = err.cause
            msg = (err.message.strip().splitlines() or [""])[-1] if err else ev.message
            return f"step {ev.step_key} failed: {msg}"
    for ev in result.all_events:
        if ev.event_type_value == "RUN_FAILURE":
            return ev.message or "run failed"
    return "run failed"


def _skips(result: Any) -> dict[str, str]:
    """Assets that materialized a 'skipped: needs CUDA' style record instead of an artifact."""
    out = {}
    for ev in result.get_asset_materialization_events():
        mat = ev.step_materialization_data.materialization
        md = {k: getattr(v, "value", v) for k, v in (mat.metadata or {}).items()}
        for k in ("skipped", "skip_reason", "status"):
            v = md.get(k)
            if isinstance(v, str) and (k != "status" or v.lower().startswith("skip")):
                out[mat.asset_key.to_user_string()] = v
                break
            if v is True:
                out[mat.asset_key.to_user_string()] = str(md.get("reason") or md.get("skip_reason") or "skipped")
                break
    return out


def execute(defs: dg.Definitions, keys: list[dg.AssetKey], *, instance: dg.DagsterInstance,
            partition_key: str | None, label: str, tags: dict[str, str] | None = None,
            ops_config: dict[str, dict] | None = None) -> RunSummary:
    """One in-process run of `keys` (with their checks) through the implicit global asset job."""
    job = defs.resolve_implicit_global_asset_job_def()
    t0 = time.perf_counter()
    # Dagster's console logger defaults to DEBUG (every engine event); INFO keeps the assets' own progress.
    level = log_level()
    run_config: dict = {"loggers": {"console": {"config": {"log_level": level}}}}
    names = {k.to_user_string() for k in keys}
    ops = {op: {"config": cfg} for op, cfg in (ops_config or {}).items() if op in names}
    if ops:
        run_config["ops"] = ops
    result = job.execute_in_process(asset_selection=keys, partition_key=partition_key, instance=instance,
                                    run_config=run_config, raise_on_error=False, tags={"distill/entry": label, **(tags or {})})
    wall = time.perf_counter() - t0
    return RunSummary(label=label, run_id=result.run_id, success=result.success, wall_s=wall,
                      step_s=_step_seconds(instance, result.run_id), failure=None if result.success else _failure_message(result),
                      skipped=_skips(result))


def materialize(keys: list[dg.AssetKey], categories: list[str] | None, *, defs: dg.Definitions | None = None,
                instance: dg.DagsterInstance | None = None, echo: Callable[[str], None] = print,
                label: str = "materialize", ops_config: dict[str, dict] | None = None) -> list[RunSummary]:
    """Partitioned keys once per category, then unpartitioned keys once. Stops at the first failed run."""
    defs = defs or load_defs()
    own_instance = instance is None
    instance = instance or get_instance()
    try:
        part, unpart, other = split_by_partitioning(defs, keys)
        if other:
            echo(f"note: skipping {', '.join(k.to_user_string() for k in other)} (not partitioned by category)")
        cats = categories or category_names()
        summaries: list[RunSummary] = []
        plan: list[tuple[str | None, list]] = [(c, part) for c in cats] if part else []
        if unpart:
            plan.append((None, unpart))
        for pkey, ks in plan:
            names = ", ".join(k.to_user_string() for k in ks)
            echo(f"-> {label} [{pkey or 'all categories'}]: {names}")
            s = execute(defs, ks, instance=instance, partition_key=pkey,
                        label=f"{label}:{pkey or 'global'}", ops_config=ops_config)
            summaries.append(s)
            status = "ok" if s.success else "FAILED"
            echo(f"   {status} in {s.wall_s:.1f}s (run {s.run_id})")
            for asset, reason in s.skipped.items():
                echo(f"   {asset}: {reason}")
            if not s.success:
                raise StageFailed(f"{label} [{pkey or 'all categories'}] failed: {s.failure} "
                                  f"(run {s.run_id}; see it in the UI: distill ui)")
        return summaries
    finally:
        if own_instance:
            instance.dispose()


# ---------------------------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------------------------
def stage_times(defs: dg.Definitions, summaries: list[RunSummary]) -> dict[str, float]:
    """Seconds per stage group, summed over runs, from the step events (asset checks count with their asset)."""
    graph = defs.resolve_asset_graph()
    by_step: dict[str, str] = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        by_step[key.to_python_identifier()] = node.group_name or "default"
    totals: dict[str, float] = defaultdict(float)
    for s in summaries:
        for step, sec in s.step_s.items():
            group = by_step.get(step)
            if group is None:  # multi-asset or check step: match on the longest asset-name prefix
                cands = [k for k in by_step if step.startswith(k)]
                group = by_step[max(cands, key=len)] if cands else "other"
            totals[group] += sec
    return dict(totals)


def asset_times(summaries: list[RunSummary]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for s in summaries:
        for step, sec in s.step_s.items():
            totals[step] += sec
    return dict(totals)


def latest_report(reports_dir: Path | None = None) -> Path | None:
    d = reports_dir or get_settings().reports
    if not d.exists():
        return None
    htmls = sorted(d.rglob("*.html"), key=lambda p: p.stat().st_mtime)
    return htmls[-1] if htmls else None


def artifact_rows() -> list[dict]:
    """The latest artifact per asset from the `artifacts` table (path, bytes), or [] before the first export."""
    if not get_settings().store.is_lake and not get_settings().database.exists():
        return []
    store = open_store()
    if not store.table_exists("artifacts"):
        return []
    df = store.query_df(
        "SELECT asset, path, bytes, created_at FROM artifacts "
        "QUALIFY row_number() OVER (PARTITION BY asset ORDER BY created_at DESC) = 1 ORDER BY created_at")
    return df.to_dict("records")


def _fmt_bytes(n: Any) -> str:
    try:
        n = float(n)
    except (TypeError, ValueError):
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def print_summary(defs: dg.Definitions, summaries: list[RunSummary], total_s: float,
                  echo: Callable[[str], None] = print) -> None:
    times = stage_times(defs, summaries)
    echo("")
    echo("time per stage (sum of step durations; runs add startup overhead):")
    for g in [*STAGE_GROUPS, *sorted(set(times) - set(STAGE_GROUPS))]:
        if g in times:
            echo(f"  {g:<12} {times[g]:7.1f}s")
    echo(f"  {'total wall':<12} {total_s:7.1f}s")
    skipped = {a: r for s in summaries for a, r in s.skipped.items()}
    for asset, reason in skipped.items():
        echo(f"  {asset}: {reason}")
    echo("")
    arts = artifact_rows()
    if arts:
        echo("artifacts:")
        for r in arts:
            size = "DuckDB table" if str(r["path"]).startswith("duckdb:") else _fmt_bytes(r.get("bytes"))
            echo(f"  {r['asset']:<20} {r['path']}  ({size})")
    report = latest_report()
    echo(f"report:    {report if report else '(no HTML report was written)'}")
    echo(f"dagster:   DAGSTER_HOME={dagster_home_env()}  -> see the runs with: distill ui")


def run(echo: Callable[[str], None] = print, groups: Iterable[str] = STAGE_GROUPS) -> list[RunSummary]:
    """Materialize every stage of the graph on the embedded defaults; raise StageFailed on the first failure."""
    t0 = time.perf_counter()
    home = dagster_home()
    s = get_settings()
    echo(f"distill quickstart: DISTILL_HOME={s.home}  tasks={s.tasks_file}  DAGSTER_HOME={home}")
    teacher = env("TEACHER_BASE_URL") or "embedded llama.cpp SmolLM2-135M-Instruct"
    echo(f"teacher: {teacher}")
    defs = load_defs()
    keys = stage_keys(defs, groups)
    if not keys:
        raise StageFailed("the Definitions hold no assets in the stage groups " + ", ".join(groups))
    present = sorted({group_of(defs, k) for k in keys}, key=lambda g: list(STAGE_GROUPS).index(g)
                     if g in STAGE_GROUPS else 99)
    missing = [g for g in groups if g not in present]
    echo(f"stages present: {', '.join(present)}" + (f"  (absent: {', '.join(missing)})" if missing else ""))
    instance = get_instance()
    try:
        summaries = materialize(keys, None, defs=defs, instance=instance, echo=echo, label="quickstart",
                                ops_config=QUICKSTART_OPS_CONFIG)
    finally:
        instance.dispose()
    print_summary(defs, summaries, time.perf_counter() - t0, echo=echo)
    return summaries


if __name__ == "__main__":
    try:
        run()
    except StageFailed as e:
        print(f"distill quickstart: {e}", file=sys.stderr)
        sys.exit(1)
