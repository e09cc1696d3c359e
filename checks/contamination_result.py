"""The result of a contamination check (seed_prompts and clean_dataset): ERROR with the overlapping pairs.

The rules are lib/contamination.py's; this module only turns their matches into an AssetCheckResult.
"""

import json
from typing import Any

import dagster as dg
import pandas as pd

from distill_assets.lib.contamination import Encode, find_contamination, rule_names
from distill_assets.lib.shared_text import SharedText, find_shared_text
from distill_assets.lib.tasks import Contamination


def _pairs_markdown(matches: pd.DataFrame, n: int = 20) -> str:
    if matches.empty:
        return "(none)"
    top = matches.copy()
    top["ngrams"] = top["ngrams"].map(lambda g: "; ".join(g[:3])[:120])
    top = top.sort_values(["rule", "cosine"], ascending=[True, False], na_position="last").head(n)
    return top.to_markdown(index=False)


def contamination_check_result(train: pd.DataFrame, evalset: pd.DataFrame, cfg: Contamination,
                               encode: Encode | None, subject: str = "training rows",
                               shared: SharedText | None = None) -> dg.AssetCheckResult:
    """ERROR unless no training row overlaps the eval set by any rule. An empty eval set fails too: a check that
    compares against nothing would pass vacuously. `shared`: the category's shared text (None: the eval items')."""
    long_rule, short_rule, embed_rule = rule_names(cfg)
    thresholds = {"ngram_long": cfg.ngram_long, "ngram_short": cfg.ngram_short,
                  "embed_threshold": cfg.embed_threshold, "long_eval_fields": list(cfg.long_eval_fields),
                  "short_eval_fields": list(cfg.short_eval_fields), "min_ngram_words": cfg.min_ngram_words,
                  "embedding_rule": "on" if encode is not None else "off",
                  "strip_shared_affixes": cfg.strip_shared_affixes, "affix_share": cfg.affix_share,
                  "ignore_frequent_ngrams": cfg.ignore_frequent_ngrams,
                  "frequent_ngram_share": cfg.frequent_ngram_share, "shared_min_texts": cfg.shared_min_texts}
    if evalset.empty:
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.ERROR,
            description="eval_set has no rows for this partition: materialize eval_set first; contamination "
                        "cannot be ruled out against nothing",
            metadata={"thresholds": dg.MetadataValue.json(thresholds), "train_rows": int(len(train))})
    if shared is None:
        shared = find_shared_text(None, evalset, cfg)
    matches = find_contamination(train, evalset, cfg, encode, shared)
    flagged = matches["example_id"].nunique() if not matches.empty else 0
    by_rule = {r: int(matches.loc[matches["rule"] == r, "example_id"].nunique()) if not matches.empty else 0
               for r in (long_rule, short_rule, embed_rule)}
    evidence = matches.head(50).to_dict("records")
    md: dict[str, Any] = {
        "train_rows": dg.MetadataValue.int(int(len(train))),
        "eval_rows": dg.MetadataValue.int(int(len(evalset))),
        "contaminated_rows": dg.MetadataValue.int(int(flagged)),
        "matches": dg.MetadataValue.int(int(len(matches))),
        "rows_by_rule": dg.MetadataValue.json(by_rule),
        "thresholds": dg.MetadataValue.json(thresholds),
        "ignored_shared_text": dg.MetadataValue.json(shared.summary()),
        "pairs": dg.MetadataValue.md(_pairs_markdown(matches)),
        "evidence": dg.MetadataValue.json(json.loads(json.dumps(evidence, default=str))),
    }
    if not matches.empty:
        md["max_cosine"] = dg.MetadataValue.float(float(pd.to_numeric(matches["cosine"]).max()
                                                        if matches["cosine"].notna().any() else float("nan")))
    ignoring = shared.describe()
    return dg.AssetCheckResult(
        passed=flagged == 0, severity=dg.AssetCheckSeverity.ERROR, metadata=md,
        description=(f"no overlap of {len(train)} {subject} with {len(evalset)} eval items" if flagged == 0 else
                     f"{flagged} of {len(train)} {subject} overlap the eval set ({by_rule})")
        + (f", {ignoring}" if ignoring else ""))
