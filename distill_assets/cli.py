"""`distill`: what users do outside the Dagster UI.

    distill quickstart                       materialize the whole graph on the embedded defaults
    distill ui                               open the Dagster UI (dagster dev) on the same instance
    distill materialize --category math      materialize the per-category assets of some partitions
    distill backfill --category math --wait  launch a Dagster backfill (run by the daemon) and follow it
    distill lineage why|from EXAMPLE_ID      why an example was kept or dropped / where it came from
    distill failures add FILE | list         report production failures / list them
    distill report open                      the latest HTML eval report

Heavy modules (dagster, torch, the Definitions) are imported inside each command, so `--help` is instant.
Bad input (unknown category, asset or id, unreadable file) prints one line and exits with status 2; a failed
run exits with status 1; neither prints a traceback (set DISTILL_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

PROG = "distill"


class UsageError(Exception):
    """Bad input from the user: exit 2 with one line."""


class RunError(Exception):
    """Something ran and failed: exit 1 with one line."""


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def _store():
    from distill_assets.settings import get_settings
    from resources.store import DuckDBStore

    db = get_settings().database
    db.parent.mkdir(parents=True, exist_ok=True)
    return DuckDBStore(database=str(db))


def _apply_env(args: argparse.Namespace) -> None:
    # Settings, partitions and resources are read from the environment when the Definitions are imported,
    # so the overrides must be in place before anything imports distill_assets.definitions.
    if getattr(args, "home", None):
        os.environ["DISTILL_HOME"] = str(Path(args.home).resolve())
    if getattr(args, "tasks", None):
        p = Path(args.tasks)
        if not p.is_file():
            raise UsageError(f"task file not found: {p}")
        os.environ["DISTILL_TASKS"] = str(p.resolve())


def _check_categories(requested: list[str] | None) -> list[str]:
    from distill_assets.tasks import load_tasks

    names = list(load_tasks().names)
    if not requested:
        return names
    unknown = [c for c in requested if c not in names]
    if unknown:
        raise UsageError(f"unknown category {', '.join(map(repr, unknown))}; the task file has: {', '.join(names)}")
    return list(dict.fromkeys(requested))


def _keys_for(defs: Any, select: str | None, *, partitioned_only: bool) -> list:
    from distill_assets import quickstart as qs

    try:
        keys = qs.resolve_selection(defs, select)
    except LookupError as e:
        raise UsageError(str(e).strip("'\"")) from None
    part, unpart, other = qs.split_by_partitioning(defs, keys)
    if partitioned_only:
        if select and (unpart or other):
            bad = ", ".join(k.to_user_string() for k in unpart + other)
            raise UsageError(f"{bad}: not partitioned by category; use `distill materialize --select {bad}` "
                             "without --category for it")
        if not part:
            raise UsageError("the selection holds no per-category asset")
        return part
    return keys


def _emit(value: Any) -> None:
    """Print a lineage/failures answer whatever its shape: DataFrame, dict, list, dataclass or text."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover
        pd = None
    if value is None:
        return
    if pd is not None and isinstance(value, pd.DataFrame):
        if value.empty:
            print("(no rows)")
            return
        with pd.option_context("display.max_colwidth", 80, "display.width", 200):
            print(value.to_string(index=False))
        return
    if hasattr(value, "to_dict") and not isinstance(value, dict):
        value = value.to_dict()
    elif hasattr(value, "__dataclass_fields__"):
        import dataclasses

        value = dataclasses.asdict(value)
    elif hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, (dict, list, tuple)):
        print(json.dumps(value, indent=2, default=str))
    else:
        print(value)


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if hasattr(value, "empty"):
        return bool(value.empty)
    if isinstance(value, (list, tuple, dict, str)):
        return len(value) == 0
    return False


# ---------------------------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------------------------
def cmd_quickstart(args: argparse.Namespace) -> int:
    from distill_assets import quickstart as qs

    try:
        qs.run()
    except qs.StageFailed as e:
        raise RunError(str(e)) from None
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from distill_assets import quickstart as qs

    home = qs.dagster_home()
    cmd = ["dagster", "dev", "-m", "distill_assets.definitions", "-h", args.host, "-p", str(args.port)]
    print(f"DAGSTER_HOME={home}\nopen http://{args.host}:{args.port}/asset-groups", flush=True)
    try:
        os.execvpe(cmd[0], cmd, os.environ)
    except FileNotFoundError:
        raise RunError("`dagster` is not on PATH; install the project (pip install -e .)") from None
    return 0  # pragma: no cover


def cmd_materialize(args: argparse.Namespace) -> int:
    from distill_assets import quickstart as qs

    defs = qs.load_defs()
    if args.category:
        cats = _check_categories(args.category)
        keys = _keys_for(defs, args.select, partitioned_only=True)
    else:
        if not args.select:
            raise UsageError("give --category (one or more) for the per-category assets, or --select for "
                             "unpartitioned ones (e.g. --select group:training)")
        cats = _check_categories(None)
        keys = _keys_for(defs, args.select, partitioned_only=False)
    try:
        summaries = qs.materialize(keys, cats, defs=defs, label="materialize")
    except qs.StageFailed as e:
        raise RunError(str(e)) from None
    total = sum(s.wall_s for s in summaries)
    print(f"materialized {len(keys)} asset(s) in {len(summaries)} run(s), {total:.1f}s; "
          f"DAGSTER_HOME={os.environ.get('DAGSTER_HOME')}")
    return 0


def _backfill_daemon_alive(instance: Any, within_s: float = 120.0) -> bool:
    try:
        beats = instance.get_daemon_heartbeats()
    except Exception:
        return False
    now = time.time()
    return any(t == "BACKFILL" and now - hb.timestamp < within_s for t, hb in beats.items())


def cmd_backfill(args: argparse.Namespace) -> int:
    """An asset backfill stored in the instance, exactly what the UI's "Materialize partitions" launches.

    The backfill daemon (`dagster dev`, or `dagster-daemon run` in production) turns it into one run per
    partition, honouring the instance's run queue and concurrency pools. `--wait` follows it to the end and,
    when no daemon is running for this DAGSTER_HOME, starts one for the duration.
    """
    import subprocess

    from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
    from dagster._core.utils import make_new_backfill_id
    from dagster._time import get_current_timestamp

    from distill_assets import quickstart as qs

    cats = _check_categories(args.category)
    defs = qs.load_defs()
    keys = _keys_for(defs, args.select, partitioned_only=True)
    instance = qs.get_instance()
    backfill_id = make_new_backfill_id()
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=backfill_id, asset_graph=defs.resolve_asset_graph(), partition_names=cats,
        asset_selection=keys, backfill_timestamp=get_current_timestamp(),
        tags={"distill/entry": "cli-backfill"}, dynamic_partitions_store=instance, all_partitions=False,
        title=args.title, description=None, run_config=None)
    instance.add_backfill(backfill)
    print(f"backfill {backfill_id}: {len(keys)} asset(s) x {len(cats)} partition(s) "
          f"({', '.join(cats)}); DAGSTER_HOME={os.environ['DAGSTER_HOME']}")
    print(f"  in the UI: /runs/b/{backfill_id}")
    daemon = None
    if not _backfill_daemon_alive(instance):
        if not args.wait:
            print("  no backfill daemon is running for this instance yet: start `distill ui` (dagster dev) or "
                  "`dagster-daemon run -m distill_assets.definitions`, or rerun with --wait")
            return 0
        print("  starting dagster-daemon for this backfill", flush=True)
        log = open(Path(os.environ["DAGSTER_HOME"]) / "daemon.log", "ab")
        daemon = subprocess.Popen(["dagster-daemon", "run", "-m", "distill_assets.definitions"],
                                  stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    if not args.wait:
        return 0
    terminal = {BulkActionStatus.COMPLETED, BulkActionStatus.COMPLETED_SUCCESS, BulkActionStatus.COMPLETED_FAILED,
                BulkActionStatus.FAILED, BulkActionStatus.CANCELED}
    deadline = time.monotonic() + args.timeout
    last = None
    try:
        while True:
            b = instance.get_backfill(backfill_id)
            runs = instance.get_runs(filters=_runs_filter(backfill_id))
            state = (b.status.value, tuple(sorted(r.status.value for r in runs)))
            if state != last:
                counts: dict[str, int] = {}
                for r in runs:
                    counts[r.status.value] = counts.get(r.status.value, 0) + 1
                print(f"  {b.status.value}: runs {counts or '{}'}", flush=True)
                last = state
            if b.status in terminal:
                break
            if time.monotonic() > deadline:
                raise RunError(f"backfill {backfill_id} still {b.status.value} after {args.timeout:.0f}s")
            if daemon is not None and daemon.poll() is not None:
                raise RunError(f"dagster-daemon exited ({daemon.returncode}); see {log.name}")
            time.sleep(2)
    finally:
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
    ok = b.status in (BulkActionStatus.COMPLETED, BulkActionStatus.COMPLETED_SUCCESS)
    failed_runs = [r.run_id for r in runs if r.status.value == "FAILURE"]
    if not ok or failed_runs:
        raise RunError(f"backfill {backfill_id} ended {b.status.value}; failed runs: {', '.join(failed_runs) or '-'}")
    print(f"backfill {backfill_id} succeeded: {len(runs)} run(s)")
    return 0


def _runs_filter(backfill_id: str):
    import dagster as dg
    from dagster._core.storage.tags import BACKFILL_ID_TAG

    return dg.RunsFilter(tags={BACKFILL_ID_TAG: backfill_id})


def cmd_lineage(args: argparse.Namespace) -> int:
    from distill_assets import lineage

    fn = lineage.why if args.action == "why" else lineage.origin
    store = _store()
    try:
        out = fn(store, args.example_id)
    except LookupError as e:  # KeyError included: the lineage module says what it looked for
        msg = e.args[0] if e.args else ""
        raise UsageError(str(msg) or f"unknown example id {args.example_id!r}") from None
    if _is_empty(out):
        raise UsageError(f"unknown example id {args.example_id!r}: no lineage recorded for it")
    if args.json and hasattr(out, "to_json"):
        print(out.to_json(orient="records", indent=2, default_handler=str))
    else:
        _emit(out)
    return 0


def cmd_failures_add(args: argparse.Namespace) -> int:
    from distill_assets.production import intake

    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    rep = intake.ingest_file(_store(), path, source="cli")
    if getattr(rep, "skipped_file", False):
        print(f"{path}: already ingested (same content); nothing to do")
        return 0
    if not hasattr(rep, "inserted"):  # another shape: show it as is
        _emit(rep)
        return 0
    print(f"{path}: {rep.lines} line(s): {rep.inserted} new failure(s) ({rep.held_out} held out for the "
          f"promotion gate), {rep.duplicates} duplicate(s), {rep.rejected} rejected")
    for r in rep.rejects[:20]:
        where = f"{r.get('source', path)}:{r.get('line')}" if r.get("line") else str(r.get("source", path))
        fld = f" field '{r['field']}'" if r.get("field") else ""
        print(f"  rejected {where}:{fld} {r.get('reason', '')} {r.get('detail', '')}".rstrip(), file=sys.stderr)
    if len(rep.rejects) > 20:
        print(f"  ... and {len(rep.rejects) - 20} more (distill failures list shows stored rows)", file=sys.stderr)
    if rep.rejected and not rep.inserted and not rep.duplicates:
        raise UsageError(f"{path}: no valid failure in the file")
    return 0


def cmd_failures_list(args: argparse.Namespace) -> int:
    from distill_assets.production import intake

    if args.category:
        _check_categories([args.category])
    store = _store()
    if not store.table_exists("production_failures"):
        print("(no failures reported yet: distill failures add FILE)")
        return 0
    try:
        out = intake.list_failures(store, status=args.status, category=args.category)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.json:
        print(out.to_json(orient="records", indent=2, date_format="iso", default_handler=str))
        return 0
    if out.empty:
        filt = " matching the filters" if (args.status or args.category) else " reported yet: distill failures add FILE"
        print(f"(no failures{filt})")
        return 0
    cols = [c for c in ("failure_id", "category", "status", "split", "resolved_by", "source", "reported_at", "input",
                        "bad_output") if c in out.columns]
    view = out[cols].copy() if cols else out
    for c in ("input", "bad_output"):
        if c in view.columns:
            view[c] = view[c].astype(str).str.slice(0, 60)
    _emit(view)
    print(f"{len(out)} failure(s)")
    return 0


def cmd_report_open(args: argparse.Namespace) -> int:
    from distill_assets.quickstart import latest_report
    from distill_assets.settings import get_settings

    reports = get_settings().reports
    path = latest_report(reports)
    if path is None:
        raise RunError(f"no HTML report under {reports} yet: materialize eval_report first "
                       "(distill quickstart, or from the UI)")
    print(path)
    if args.browser:
        import webbrowser

        if not webbrowser.open(path.as_uri()):
            print(f"(no browser available; open {path.as_uri()} yourself)", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", metavar="DIR", help="data directory (overrides $DISTILL_HOME, default ./.distill)")
    common.add_argument("--tasks", metavar="FILE", help="task file (overrides $DISTILL_TASKS, default: the demo)")

    p = argparse.ArgumentParser(prog=PROG, description="Teacher-to-student distillation as a Dagster asset graph.",
                                epilog="The Dagster UI is the main interface: `distill ui`.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    q = sub.add_parser("quickstart", parents=[common], help="materialize the whole graph on the embedded defaults",
                       description="Materialize every stage (seeds .. eval_report) in-process on the embedded "
                                   "teacher; print time per stage and where the report and exports are. Runs "
                                   "are recorded in $DAGSTER_HOME (default $DISTILL_HOME/dagster_home).")
    q.set_defaults(fn=cmd_quickstart)

    u = sub.add_parser("ui", parents=[common], help="start the Dagster UI (dagster dev) on the distill instance",
                       description="Run `dagster dev` on $DAGSTER_HOME (default $DISTILL_HOME/dagster_home), "
                                   "so quickstart and CLI runs appear in the UI.")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=3000)
    u.set_defaults(fn=cmd_ui)

    m = sub.add_parser("materialize", parents=[common], help="materialize assets for some category partitions",
                       description="Materialize the per-category assets (with their checks) for each --category, "
                                   "one in-process run per partition, recorded in the Dagster instance.")
    m.add_argument("--category", "-c", action="append", metavar="NAME",
                   help="a category (partition) from the task file; repeat for several")
    m.add_argument("--select", "-s", metavar="ASSETS",
                   help="asset names (a,b) or a Dagster selection (group:seeds, key:raw_generations+); "
                        "default: every per-category asset")
    m.set_defaults(fn=cmd_materialize)

    b = sub.add_parser("backfill", parents=[common], help="launch a Dagster backfill of category partitions",
                       description="Store an asset backfill in the Dagster instance (as the UI's 'Materialize "
                                   "partitions' does); the backfill daemon runs one run per partition.")
    b.add_argument("--category", "-c", action="append", metavar="NAME", help="partition; default: all categories")
    b.add_argument("--select", "-s", metavar="ASSETS", help="as for materialize; default: every per-category asset")
    b.add_argument("--title", help="a title shown in the UI's backfill list")
    b.add_argument("--wait", action="store_true",
                   help="follow the backfill to the end (starts dagster-daemon if none is running)")
    b.add_argument("--timeout", type=float, default=3600.0, help="seconds --wait waits (default 3600)")
    b.set_defaults(fn=cmd_backfill)

    lin = sub.add_parser("lineage", parents=[common], help="why an example was kept/dropped, or where it came from")
    lsub = lin.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, helptext in (("why", "every stage's verdict, reason and evidence for EXAMPLE_ID"),
                           ("from", "the seed and generation chain EXAMPLE_ID came from")):
        lp = lsub.add_parser(name, parents=[common], help=helptext, description=helptext)
        lp.add_argument("example_id")
        lp.add_argument("--json", action="store_true", help="print JSON records")
        lp.set_defaults(fn=cmd_lineage)

    f = sub.add_parser("failures", parents=[common], help="report production failures and list them")
    fsub = f.add_subparsers(dest="action", metavar="ACTION", required=True)
    fa = fsub.add_parser("add", parents=[common], help="ingest a JSONL/CSV file of production failures",
                         description="Ingest failures (category, input, bad_output, expected?) into "
                                     "production_failures.")
    fa.add_argument("file")
    fa.set_defaults(fn=cmd_failures_add)
    fl = fsub.add_parser("list", parents=[common], help="list reported failures")
    fl.add_argument("--status", help="only this status: pending, in_training, held_out or resolved")
    fl.add_argument("--category", "-c", help="only this category")
    fl.add_argument("--json", action="store_true", help="print JSON records")
    fl.set_defaults(fn=cmd_failures_list)

    r = sub.add_parser("report", parents=[common], help="the eval report")
    rsub = r.add_subparsers(dest="action", metavar="ACTION", required=True)
    ro = rsub.add_parser("open", parents=[common], help="print (and with --browser open) the latest HTML report")
    ro.add_argument("--browser", action="store_true", help="also open it in the default browser")
    ro.set_defaults(fn=cmd_report_open)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import warnings

    # Dagster flags beta/preview parameters on every import; they say nothing a CLI user can act on.
    warnings.filterwarnings("ignore", message=r".*is currently in (beta|preview)")
    try:
        _apply_env(args)
        return int(args.fn(args) or 0)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("DISTILL_DEBUG"):
            raise
        from distill_assets.errors import InputError, InputErrors

        if isinstance(e, InputErrors) and e.errors:
            more = f" (+{len(e.errors) - 1} more)" if len(e.errors) > 1 else ""
            print(f"{PROG}: error: {e.errors[0]}{more}", file=sys.stderr)
            return 2
        if isinstance(e, (InputError, InputErrors, FileNotFoundError, ValueError)):
            first = str(e).strip().splitlines()
            print(f"{PROG}: error: {first[0] if first else type(e).__name__}"
                  + (f" (+{len(first) - 1} more lines)" if len(first) > 1 else ""), file=sys.stderr)
            return 2
        if isinstance(e, ModuleNotFoundError) and (e.name or "").startswith("distill_assets"):
            print(f"{PROG}: this command needs {e.name}, which is not in this install", file=sys.stderr)
            return 1
        print(f"{PROG}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} "
              "(DISTILL_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
