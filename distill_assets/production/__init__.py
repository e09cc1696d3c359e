"""The production loop: failure intake, the retraining sensor, targeted jobs and the promotion gate.

Per-category thresholds (how many failures trigger a retrain, how long one may wait, the size limit of a
failure, the held-out fraction) live on `Category` in the task file. The process-wide settings below are the
only other knobs; their defaults are here and nowhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from distill_assets.settings import get_settings

# status lifecycle: pending -> in_training | held_out -> resolved
PENDING, IN_TRAINING, HELD_OUT, RESOLVED = "pending", "in_training", "held_out", "resolved"
STATUSES = (PENDING, IN_TRAINING, HELD_OUT, RESOLVED)
TRAIN_SPLIT, HELDOUT_SPLIT = "train", "heldout"


@dataclass(frozen=True)
class ProductionSettings:
    failures_dir: Path  # drop folder of *.jsonl files, scanned on every sensor tick
    max_line_bytes: int  # a longer JSONL line is rejected unread (guards memory, not a content rule)
    sensor_interval_s: int


def production_settings() -> ProductionSettings:
    home = get_settings().home
    return ProductionSettings(
        failures_dir=Path(os.environ.get("DISTILL_FAILURES_DIR") or (home / "failures")).resolve(),
        max_line_bytes=int(os.environ.get("DISTILL_FAILURE_MAX_LINE_BYTES") or 4 * 1024 * 1024),
        sensor_interval_s=int(os.environ.get("DISTILL_FAILURE_SENSOR_INTERVAL_S") or 30),
    )
