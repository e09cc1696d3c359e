"""`distill`: what users do outside the Dagster UI.

    distill quickstart                       materialize the whole graph on the embedded defaults
    distill ui                               open the Dagster UI (dagster dev) on the same instance
    distill materialize --category math      materialize the per-category assets of some partitions
    distill backfill --category math --wait  launch a Dagster backfill (run by the daemon) and follow it
    distill lineage why|from EXAMPLE_ID      why an example was kept or dropped / where it came from
    distill lineage model ARTIFACT           the exact rows that trained a model, and the SQL that returns them
    distill failures add FILE | list         report production failures / list them
    distill sql "select * from lineage_funnel"  a read-only query of the store
    distill report open                      the latest HTML eval report
    distill batch export-requests CAT FILE   a generation phase as a batch file, for `vllm run-batch`
    distill batch import-results REQ RES     the runner's answers into teacher_calls
    distill export dataset DIR               clean_dataset as a Hugging Face dataset folder with its card

This module parses arguments only: the command modules (`commands.py`, `backfill.py`, `sql.py`) import Dagster and the
resources, and are loaded after parsing, so `--help` is instant. Bad input (unknown category, asset or id,
unreadable file) prints one line and exits with status 2; a failed run exits with status 1; neither prints a
traceback (set DISTILL_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from distill_assets.cli.errors import RunError, UsageError
from distill_assets.lib.errors import InputError, InputErrors
from distill_assets.lib.settings import debug

PROG = "distill"


def _apply_env(args: argparse.Namespace) -> None:
    # --home/--tasks override the environment for everything the command then loads (settings, task file,
    # the Definitions and any child process such as dagster dev).
    if getattr(args, "home", None):
        os.environ["DISTILL_HOME"] = str(Path(args.home).resolve())
    if getattr(args, "tasks", None):
        p = Path(args.tasks)
        if not p.is_file():
            raise UsageError(f"task file not found: {p}")
        os.environ["DISTILL_TASKS"] = str(p.resolve())


def _run_command(args: argparse.Namespace) -> int:
    module, name = args.fn
    # loaded only now: the command modules import Dagster, which `--help` must not pay for
    commands = importlib.import_module(f"distill_assets.cli.{module}")
    return int(getattr(commands, name)(args) or 0)


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
    q.set_defaults(fn=("commands", "cmd_quickstart"))

    u = sub.add_parser("ui", parents=[common], help="start the Dagster UI (dagster dev) on the distill instance",
                       description="Run `dagster dev` on $DAGSTER_HOME (default $DISTILL_HOME/dagster_home), "
                                   "so quickstart and CLI runs appear in the UI.")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=3000)
    u.set_defaults(fn=("commands", "cmd_ui"))

    m = sub.add_parser("materialize", parents=[common], help="materialize assets for some category partitions",
                       description="Materialize the per-category assets (with their checks) for each --category, "
                                   "one in-process run per partition, recorded in the Dagster instance.")
    m.add_argument("--category", "-c", action="append", metavar="NAME",
                   help="a category (partition) from the task file; repeat for several")
    m.add_argument("--select", "-s", metavar="ASSETS",
                   help="asset names (a,b) or a Dagster selection (group:seeds, key:raw_generations+); "
                        "default: every per-category asset")
    m.set_defaults(fn=("commands", "cmd_materialize"))

    b = sub.add_parser("backfill", parents=[common], help="launch a Dagster backfill of category partitions",
                       description="Store an asset backfill in the Dagster instance (as the UI's 'Materialize "
                                   "partitions' does); the backfill daemon runs one run per partition.")
    b.add_argument("--category", "-c", action="append", metavar="NAME", help="partition; default: all categories")
    b.add_argument("--select", "-s", metavar="ASSETS", help="as for materialize; default: every per-category asset")
    b.add_argument("--title", help="a title shown in the UI's backfill list")
    b.add_argument("--wait", action="store_true",
                   help="follow the backfill to the end (starts dagster-daemon if none is running)")
    b.add_argument("--timeout", type=float, default=3600.0, help="seconds --wait waits (default 3600)")
    b.set_defaults(fn=("backfill", "cmd_backfill"))

    lin = sub.add_parser("lineage", parents=[common], help="why an example was kept/dropped, or where it came from")
    lsub = lin.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, helptext in (("why", "every stage's verdict, reason and evidence for EXAMPLE_ID"),
                           ("from", "the seed and generation chain EXAMPLE_ID came from")):
        lp = lsub.add_parser(name, parents=[common], help=helptext, description=helptext)
        lp.add_argument("example_id")
        lp.add_argument("--json", action="store_true", help="print JSON records")
        lp.set_defaults(fn=("commands", "cmd_lineage"))
    lm = lsub.add_parser("model", parents=[common], help="the exact clean_dataset rows that trained ARTIFACT",
                         description="The clean_dataset rows that trained a model artifact (lora_adapter, "
                                     "merged_model or an export), and the SQL query that returns them.")
    lm.add_argument("artifact", help="an artifact id, e.g. lora_adapter:<sha> (see the artifacts table)")
    lm.add_argument("--json", action="store_true", help="print the rows as JSON records")
    lm.set_defaults(fn=("commands", "cmd_lineage_model"))

    f = sub.add_parser("failures", parents=[common], help="report production failures and list them")
    fsub = f.add_subparsers(dest="action", metavar="ACTION", required=True)
    fa = fsub.add_parser("add", parents=[common], help="ingest a JSONL/CSV file of production failures",
                         description="Ingest failures (category, input, bad_output, expected?) into "
                                     "production_failures.")
    fa.add_argument("file")
    fa.set_defaults(fn=("commands", "cmd_failures_add"))
    fl = fsub.add_parser("list", parents=[common], help="list reported failures")
    fl.add_argument("--status", help="only this status: pending, in_training, held_out or resolved")
    fl.add_argument("--category", "-c", help="only this category")
    fl.add_argument("--json", action="store_true", help="print JSON records")
    fl.set_defaults(fn=("commands", "cmd_failures_list"))

    sq = sub.add_parser("sql", parents=[common], help="run a read-only SQL query on the store",
                        description="Run read-only SQL (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN) on "
                                    "$DISTILL_HOME/distill.duckdb and print the result; e.g. "
                                    "distill sql \"select * from lineage_funnel\". Waits for a running step's "
                                    "lock up to --timeout, then says who holds it.")
    sq.add_argument("query")
    sq.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the store lock (default 30)")
    sq.add_argument("--json", action="store_true", help="print JSON records")
    sq.set_defaults(fn=("sql", "cmd_sql"))

    r = sub.add_parser("report", parents=[common], help="the eval report")
    rsub = r.add_subparsers(dest="action", metavar="ACTION", required=True)
    ro = rsub.add_parser("open", parents=[common], help="print (and with --browser open) the latest HTML report")
    ro.add_argument("--browser", action="store_true", help="also open it in the default browser")
    ro.set_defaults(fn=("commands", "cmd_report_open"))

    bt = sub.add_parser("batch", parents=[common], help="a generation phase through an offline batch runner")
    bsub = bt.add_subparsers(dest="action", metavar="ACTION", required=True)
    be = bsub.add_parser("export-requests", parents=[common], help="write a category's pending generation phase "
                         "as a batch input file", description="Write the first generation phase of CATEGORY with "
                         "unanswered calls as OpenAI batch JSONL (custom_id = call key), for `vllm run-batch`. "
                         "Needs seed_prompts materialized and TEACHER_MODEL set to the runner's --model.")
    be.add_argument("category", metavar="CATEGORY")
    be.add_argument("file", metavar="FILE")
    be.set_defaults(fn=("batch", "cmd_export"))
    bi = bsub.add_parser("import-results", parents=[common], help="record a batch output file in teacher_calls",
                         description="Record the answers of RESULTS (the runner's output for REQUESTS) in "
                                     "teacher_calls at the batch price; the next raw_generations run uses them.")
    bi.add_argument("requests", metavar="REQUESTS")
    bi.add_argument("results", metavar="RESULTS")
    bi.add_argument("--category", "-c", help="the category the requests were exported for (for the ledger)")
    bi.set_defaults(fn=("batch", "cmd_import"))
    e = sub.add_parser("export", parents=[common], help="export data out of the ledger")
    esub = e.add_subparsers(dest="action", metavar="ACTION", required=True)
    ed = esub.add_parser("dataset", parents=[common], help="clean_dataset as a Hugging Face dataset folder: "
                         "Parquet + chat JSONL per category and a generated README.md card",
                         description="Write every category of clean_dataset to DIR: data/<category>/<split>"
                                     ".parquet, jsonl/<category>/<split>.jsonl, README.md (the dataset card, "
                                     "its numbers read from the ledger) and card.json. datasets.load_dataset(DIR) "
                                     "loads it. DIR is replaced as a whole.")
    ed.add_argument("dir", metavar="DIR", help="output folder (replaced)")
    ed.add_argument("--ngrams-only", action="store_true",
                    help="re-check contamination with the n-gram rules only (skips loading the embedder)")
    ed.set_defaults(fn=("export", "cmd_export_dataset"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Dagster flags beta/preview parameters on every import; they say nothing a CLI user can act on.
    warnings.filterwarnings("ignore", message=r".*is currently in (beta|preview)")
    try:
        _apply_env(args)
        return _run_command(args)
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
        if debug():
            raise
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
