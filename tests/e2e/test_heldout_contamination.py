"""Held-out production failures are eval rows, so the real blocking contamination checks are what prove they never
reach training: seeds built from failures pass (also when one prompt is reported with several bad outputs), and a
training row that carries a held-out failure's prompt fails with the failure's eval id as evidence."""

import json

import dagster as dg
import pandas as pd
import pytest

from checks.clean_dataset import build_clean_contamination_check
from checks.seed_prompts import build_seed_prompts_checks
from distill_assets.defs.eval_set import eval_set
from distill_assets.defs.partitions import CATEGORY
from distill_assets.defs.resources import embedded_embedder
from distill_assets.defs.seeds import seed_prompts
from distill_assets.lib.production import intake, split, state
from distill_assets.lib.records import eval_id
from distill_assets.lib.tasks import load_tasks
from tests.checks.helpers import clean_rows, seed_pairs

CAT = "support"


@pytest.fixture(scope="module")
def embedder():
    return embedded_embedder()


DISTINCT = [
    ("The discount code SPRING20 was rejected at checkout yesterday evening.", "Codes expire at midnight; I added "
     "the discount to your order manually."),
    ("Why did my subscription renew when I cancelled it in March?", "I refunded the renewal and confirmed the "
     "cancellation."),
    ("Can I change the shipping address after the package left the warehouse?", "Once shipped, the carrier can "
     "redirect it; I opened a redirect request."),
    ("My wireless earbuds stopped charging after two weeks of use.", "They are under warranty; a replacement "
     "ships today."),
    ("The invoice shows VAT even though we are a registered business abroad.", "Send your VAT number and we "
     "will reissue the invoice without VAT."),
    ("I was charged twice for a single blender order.", "The duplicate charge was a hold and drops off within "
     "three days."),
    ("How do I merge two customer accounts with different emails?", "Tell me both emails and I will merge them "
     "into one account."),
    ("The size chart says medium but the jacket fits like a small.", "You can exchange it for free for a large."),
    ("Gift card balance disappeared after I logged out.", "The balance is safe; it shows again after you sign in "
     "with the card's email."),
    ("Is there a way to schedule delivery for a weekend morning?", "Yes, pick a Saturday slot on the delivery "
     "page."),
    ("The app crashes whenever I open the order history tab.", "Update to the latest app version; the crash is "
     "fixed there."),
    ("Can you price match a competitor's advertised sale on this vacuum?", "We match verified prices from major "
     "retailers; send me the link."),
    ("My loyalty tier dropped even though I spent more this year.", "Tiers use the last twelve months; I "
     "restored your gold tier."),
    ("A coupon in the newsletter points to a page that does not exist.", "That link was broken; here is the "
     "working coupon code."),
]


@pytest.fixture
def reported(store):
    """14 unrelated failures, each reported with two different bad outputs (28 failures)."""
    recs = [{"category": CAT, "input": p, "bad_output": b, "expected": e}
            for p, e in DISTINCT for b in ("Please wait.", "Contact the carrier yourself.")]
    assert intake.add_failures(store, recs).inserted == 28
    df = state.list_failures(store, category=CAT)
    held = sorted(set(df.loc[df["split"] == "heldout", "input"]))
    train = sorted(set(df.loc[df["split"] == "train", "input"]))
    assert held and train and not set(held) & set(train)
    frac = load_tasks().category(CAT).heldout_failure_fraction
    # unrelated prompts: each side is the prompt's hash, as for any failure that overlaps nothing
    assert held == sorted(p for p, _ in DISTINCT if split.is_held_out(split.split_key(CAT, p), frac))
    return held, train


def _graph(frame: pd.DataFrame):
    @dg.asset(name="clean_dataset", partitions_def=CATEGORY, metadata={"partition_expr": "category"})
    def clean_stand_in() -> pd.DataFrame:
        return frame

    return [seed_prompts, eval_set, clean_stand_in, build_clean_contamination_check(CATEGORY),
            *build_seed_prompts_checks(CATEGORY)]


def _checks(duck_resources, embedder, frame):
    res = dg.materialize(_graph(frame), partition_key=CAT, resources={**duck_resources, "embedder": embedder},
                         raise_on_error=False)
    return res, {e.asset_key.to_user_string(): e for e in res.get_asset_check_evaluations()}


def test_failure_seeds_pass_and_heldout_failures_are_eval_rows(store, duck_resources, embedder, reported):
    held, train = reported
    # training data made from the training-side failures (as generation would answer them)
    answers = dict(DISTINCT)
    frame = clean_rows(seed_pairs(CAT, 6) + [(p, answers[p]) for p in train], CAT)
    res, checks = _checks(duck_resources, embedder, frame)
    assert res.success
    assert checks["seed_prompts"].passed and checks["clean_dataset"].passed
    seeds = store.query_df("SELECT prompt, source FROM seed_prompts WHERE category = ?", [CAT])
    assert set(seeds.loc[seeds["source"] == "production", "prompt"]) == set(train)
    ev = store.query_df("SELECT eval_id, prompt, source FROM eval_set WHERE category = ?", [CAT])
    assert set(ev.loc[ev["source"] == "production_heldout", "prompt"]) == set(held)


def test_a_heldout_failure_in_training_fails_the_blocking_check(store, duck_resources, embedder, reported):
    held, _ = reported
    leak = held[0]
    frame = clean_rows(seed_pairs(CAT, 6) + [(leak, "Sure, happy to help with that.")], CAT)
    res, checks = _checks(duck_resources, embedder, frame)
    assert not res.success
    check = checks["clean_dataset"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["contaminated_rows"].value == 1
    assert eval_id(CAT, leak, None, "production_heldout") in json.dumps(check.metadata["evidence"].value)
    assert checks["seed_prompts"].passed  # the failure itself never became a seed


def test_near_duplicate_failures_stay_on_one_side_so_the_seed_check_passes(store, duck_resources, embedder):
    """Templated reports of one problem share n-grams: split by prompt hash alone, some would be seeds and some
    eval rows, and the blocking seed check would stop the category's retrain. Intake keeps them together."""
    prompts = [f"My parcel {i} says delivered but the box never arrived at my door, what now?" for i in range(12)]
    intake.add_failures(store, [{"category": CAT, "input": p, "bad_output": "Please wait.",
                                 "expected": "We will open a carrier claim today."} for p in prompts])
    df = state.list_failures(store, category=CAT)
    assert df["split"].nunique() == 1
    frac = load_tasks().category(CAT).heldout_failure_fraction
    first = split.is_held_out(split.split_key(CAT, prompts[0]), frac)
    assert set(df["split"]) == {"heldout" if first else "train"}  # the first report decides for the cluster
    # a later report of the same problem joins it, whatever its own hash says
    late = [f"My parcel {i} says delivered but the box never arrived at my door, what now?" for i in range(12, 40)]
    assert {split.is_held_out(split.split_key(CAT, p), frac) for p in late} == {True, False}
    intake.add_failures(store, [{"category": CAT, "input": p, "bad_output": "Please wait."} for p in late])
    assert state.list_failures(store, category=CAT)["split"].nunique() == 1
    # and an unrelated failure still gets its own hash side
    other = DISTINCT[0]
    intake.add_failures(store, [{"category": CAT, "input": other[0], "bad_output": "x", "expected": other[1]}])
    row = state.list_failures(store, category=CAT).iloc[-1]
    assert row["split"] == ("heldout" if split.is_held_out(split.split_key(CAT, other[0]), frac) else "train")

    res, checks = _checks(duck_resources, embedder, clean_rows(seed_pairs(CAT, 6), CAT))
    assert checks["seed_prompts"].passed and checks["clean_dataset"].passed and res.success
