"""Category partitions: the task file's category names are the partition keys of every per-category asset."""

import dagster as dg

from distill_assets.lib.tasks import load_tasks


def category_partitions() -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(load_tasks().names)


CATEGORY = category_partitions()
