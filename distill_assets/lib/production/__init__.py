"""The production loop's library: failure intake, the held-out split, failure status, batches and promotion.

Per-category thresholds (how many failures trigger a retrain, how long one may wait, the size limit of a
failure, the held-out fraction) live on `Category` in the task file; the process-wide knobs (drop folder, line
limit, sensor interval) are `lib.settings.production_settings()`.
"""

# status lifecycle: pending -> in_training | held_out -> resolved
PENDING, IN_TRAINING, HELD_OUT, RESOLVED = "pending", "in_training", "held_out", "resolved"
STATUSES = (PENDING, IN_TRAINING, HELD_OUT, RESOLVED)
TRAIN_SPLIT, HELDOUT_SPLIT = "train", "heldout"
