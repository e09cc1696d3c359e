"""The asset checks of the per-category tables, instantiated on the category partitions: the schema of every
table, seed_prompts' contamination check and clean_dataset's contamination, dedup and yield checks."""

from checks.clean_dataset import build_clean_dataset_checks
from checks.seed_prompts import build_seed_prompts_checks
from checks.tables import build_schema_checks
from distill_assets.defs.partitions import CATEGORY

asset_checks = [
    *build_schema_checks(CATEGORY),
    *build_seed_prompts_checks(CATEGORY),
    *build_clean_dataset_checks(CATEGORY),
]
