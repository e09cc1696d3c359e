"""`distill batch export-requests | import-results`: a generation phase through an offline batch runner
(`vllm run-batch`), which reads and writes the Batch API's JSONL files without serving /v1/batches."""

from __future__ import annotations

import argparse
from pathlib import Path

from distill_assets.cli.common import check_categories, store
from distill_assets.cli.errors import UsageError
from distill_assets.defs.resources import llm_from_env
from distill_assets.lib.generation.offline import export_requests, import_results
from distill_assets.lib.tasks import load_tasks


def _teacher():
    teacher = llm_from_env("TEACHER", "teacher")
    if not teacher.model:
        raise UsageError("set TEACHER_MODEL to the model the runner serves (vllm run-batch --model ...): it is "
                         "part of every call key and of every request line")
    return teacher


def cmd_export(args: argparse.Namespace) -> int:
    (name,) = check_categories([args.category])
    teacher, st = _teacher(), store()
    seeds = (st.query_df("SELECT * FROM seed_prompts WHERE category = ?", [name])
             if st.table_exists("seed_prompts") else None)
    if seeds is None or seeds.empty:
        raise UsageError(f"no seed_prompts for {name} yet: distill materialize -c {name} -s seed_prompts")
    out = Path(args.file)
    done = export_requests(load_tasks().category(name), seeds, st, teacher, teacher.model, out)
    if not done.phase:
        print(f"{name}: every generation call is answered ({done.answered}); nothing to export. Materialize "
              f"raw_generations: distill materialize -c {name} -s raw_generations")
        return 0
    print(f"{out}: {done.requests} request(s) of generation phase {done.phase} of {name} "
          f"({done.answered} call(s) of earlier phases already answered)\n"
          f"next: vllm run-batch -i {out} -o results.jsonl --model {teacher.model}\n"
          f"then: distill batch import-results {out} results.jsonl --category {name}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    name = check_categories([args.category])[0] if args.category else None
    paths = [Path(args.requests), Path(args.results)]
    for p in paths:
        if not p.is_file():
            raise UsageError(f"{p}: no such file")
    rep = import_results(store(), _teacher(), *paths, category=name)
    for e in rep.errors[:10]:
        print(f"  {e}")
    print(f"{paths[1]}: {rep.answered} answer(s) recorded in teacher_calls, {rep.already} already there, "
          f"{rep.failed} failed line(s) (asked again by the next run), {rep.unknown} line(s) not in {paths[0]}")
    if not rep.answered and not rep.already:
        raise UsageError(f"{paths[1]}: no usable answer for the requests of {paths[0]}")
    return 0
