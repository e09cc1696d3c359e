"""The filter stages' logic (quality, dedup, judge, verify, balance, decontaminate), pure: each annotates every row
(keep + reason + evidence); the assets in distill_assets/defs record the verdicts in `lineage`."""
