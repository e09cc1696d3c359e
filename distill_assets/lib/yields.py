"""Yield: clean/raw per category within the task's `yield_band`, and each filter stage's loss within its
`stage_loss_bands` entry (usual losses: basic 10-20%, dedup 20-40%, judge 20-30%, verification 10-30%).

Outside a band is a WARN: the data may still be usable, but a human should look at the funnel. Below
`yield_floor`, or with fewer clean train rows than `min_train_examples`, it is an ERROR that blocks training.
"""

from dataclasses import dataclass, field

import pandas as pd

from distill_assets.lib.tasks import Category

ERROR, WARN = "error", "warn"


@dataclass
class YieldReport:
    raw: int
    clean: int
    train: int
    yield_: float | None
    stages: pd.DataFrame
    issues: list[tuple[str, str]] = field(default_factory=list)  # (level, message)

    @property
    def passed(self) -> bool:
        return not self.issues

    @property
    def level(self) -> str:
        """ERROR when any issue is one (it blocks training), else WARN."""
        return ERROR if any(lvl == ERROR for lvl, _ in self.issues) else WARN


def _no_verdicts(stage: str, written: dict[str, int] | None) -> tuple[str, str | None]:
    """(status, issue) of a stage the lineage has no verdicts of, from what the IO manager wrote for it."""
    if written is None:
        return "missing", f"{stage}: no lineage recorded, its loss cannot be checked"
    if stage not in written:
        return "not materialized", f"{stage}: never materialized for this category, its loss cannot be checked"
    if written[stage] == 0:
        return "no rows", None  # nothing reached it: the yield itself says so
    return "missing", (f"{stage}: {written[stage]} row(s) written without lineage verdicts (written before "
                       f"verdicts were recorded with the rows); rematerialize {stage}")


def evaluate_yield(n_raw: int, clean: pd.DataFrame, stages: pd.DataFrame, category: Category,
                   written: dict[str, int] | None = None) -> YieldReport:
    """Pure evaluation: `stages` is the lineage funnel of the category (distill_assets.lib.stages.funnel);
    `written` the rows each stage table got for it (lib/stages.written_rows), which says why a stage has no
    verdicts."""
    n_clean = int(len(clean))
    n_train = int((clean["split"] == "train").sum()) if "split" in clean.columns else n_clean
    y = n_clean / n_raw if n_raw > 0 else None
    lo, hi = category.yield_band
    rep = YieldReport(raw=int(n_raw), clean=n_clean, train=n_train, yield_=y, stages=pd.DataFrame())
    if y is None:
        rep.issues.append((ERROR, "no raw generations for this category: yield is undefined"))
    elif y < category.yield_floor:
        rep.issues.append((ERROR, f"yield {y:.1%} is below the floor {category.yield_floor:.1%}"))
    elif not lo <= y <= hi:
        rep.issues.append((WARN, f"yield {y:.1%} is outside the band {lo:.0%}-{hi:.0%}"))
    if n_train < category.min_train_examples:
        rep.issues.append((ERROR, f"{n_train} clean train example(s); training needs at least "
                                  f"{category.min_train_examples} (min_train_examples)"))
    rows = []
    by_stage = {r["stage"]: r for r in stages.to_dict("records")} if not stages.empty else {}
    for stage, band in category.stage_loss_bands.items():
        r = by_stage.get(stage)
        if r is None:
            status, issue = _no_verdicts(stage, written)
            if issue:
                rep.issues.append((WARN, issue))
            rows.append({"stage": stage, "rows_in": None, "kept": None, "dropped": None, "quarantined": None,
                         "loss": None, "band": f"{band.low:.0%}-{band.high:.0%}", "status": status})
            continue
        loss = float(r["loss"]) if pd.notna(r["loss"]) else None
        status = "ok" if loss is not None and band.low <= loss <= band.high else "outside band"
        if status != "ok":
            rep.issues.append((WARN, f"{stage}: loss {'n/a' if loss is None else f'{loss:.1%}'} is outside the "
                                     f"expected {band.low:.0%}-{band.high:.0%}"))
        rows.append({"stage": stage, "rows_in": int(r["rows_in"]), "kept": int(r["kept"]),
                     "dropped": int(r["dropped"]), "quarantined": int(r["quarantined"]),
                     "loss": None if loss is None else round(loss, 4),
                     "band": f"{band.low:.0%}-{band.high:.0%}", "status": status})
    for stage, r in by_stage.items():  # stages without a band (balanced, decontaminated, ...) still shown
        if stage not in category.stage_loss_bands:
            rows.append({"stage": stage, "rows_in": int(r["rows_in"]), "kept": int(r["kept"]),
                         "dropped": int(r["dropped"]), "quarantined": int(r["quarantined"]),
                         "loss": None if pd.isna(r["loss"]) else round(float(r["loss"]), 4),
                         "band": "-", "status": "no band"})
    rep.stages = pd.DataFrame(rows)
    return rep
