"""Evaluation: task metrics, position-debiased pairwise judging, variant generation/efficiency and the report.

The modules are pure functions over DataFrames; `assets.py` wires them into the `eval_report` asset and
`checks/eval_gate.py` turns the summary into a promotion decision.
"""
