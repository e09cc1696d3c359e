"""A reconstructable job over seeds and generation with the multiprocess executor (for lock tests)."""

import dagster as dg

from distill_assets.defs.generation import raw_generations
from distill_assets.defs.resources import build_resources
from distill_assets.defs.seeds import seed_prompts


def generation_job() -> dg.JobDefinition:
    defs = dg.Definitions(
        assets=[seed_prompts, raw_generations],
        jobs=[dg.define_asset_job("gen", selection=["seed_prompts", "raw_generations"],
                                  executor_def=dg.multiprocess_executor)],
        resources=build_resources(),
    )
    return defs.resolve_job_def("gen")
