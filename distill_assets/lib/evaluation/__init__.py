"""Evaluation library: task metrics, position-debiased pairwise judging, variant discovery and generation,
efficiency, the summary/report, and the promotion gate. Pure functions over DataFrames (plus store reads/writes
where named); `defs/evaluation.py` wires them into the `eval_report` asset and `checks/eval_report.py` into the
`eval_gate` check."""
