import dagster as dg
import numpy as np
import pandas as pd
import pytest

from checks.dedup import dedup_check_result, exact_duplicates, near_duplicate_pairs
from checks.contamination import training_texts
from resources.embedder import EmbedderResource
from tests.checks.helpers import category, clean_frame, clean_rows, hash_encode, seed_pairs


def test_clean_rows_pass():
    r = dedup_check_result(clean_frame(), category(), hash_encode)
    assert r.passed, r.metadata["top_pairs"].value


def test_exact_duplicate_after_normalization_fails():
    pairs = seed_pairs(n=10)
    ins, resp = pairs[3]
    pairs.append((ins.upper() + "  ", resp.replace(" ", "   ") + "!!"))  # same after normalization
    df = clean_rows(pairs)
    r = dedup_check_result(df, category(), hash_encode)
    assert not r.passed and r.severity == dg.AssetCheckSeverity.ERROR
    assert r.metadata["exact_duplicates"].value == 1 and r.metadata["near_duplicate_pairs"].value == 0
    [pair] = r.metadata["pairs"].value
    assert {pair["example_a"], pair["example_b"]} == set(df["example_id"].iloc[[3, 10]])


def test_near_duplicate_pair_fails_and_ignores_filter_annotations():
    pairs = seed_pairs(n=10)
    ins, resp = pairs[2]
    pairs.append(("Another question entirely?", resp + " Thanks"))
    df = clean_rows(pairs)
    df["keep"] = True  # annotations claiming everything is fine are not trusted
    df["reason"] = "ok"
    r = dedup_check_result(df, category(), hash_encode)
    assert not r.passed
    assert r.metadata["near_duplicate_pairs"].value == 1 and r.metadata["exact_duplicates"].value == 0
    assert r.metadata["pairs"].value[0]["cosine"] > category().filters.near_dup_threshold


def test_threshold_comes_from_the_task_file():
    pairs = seed_pairs(n=10)
    pairs.append(("Another question entirely?", pairs[2][1] + " Thanks"))
    df = clean_rows(pairs)
    loose = category().model_copy(update={"filters": category().filters.model_copy(update={"near_dup_threshold": 0.999})})
    assert dedup_check_result(df, loose, hash_encode).passed


def test_blocked_pairs_equal_the_full_matrix():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(300, 16)).astype(np.float32)
    v[50] = v[7] + 0.01
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    full = v @ v.T
    iu = np.triu_indices(len(v), 1)
    want = int((full[iu] > 0.6).sum())
    n, top = near_duplicate_pairs(v, 0.6, block=64, keep_top=10_000)
    assert n == want and len(top) == want and (7, 50) in {(i, j) for i, j, _ in top}


def test_label_task_embeds_instruction_with_label():
    c = category("classify")
    rows = clean_rows([("Classify the intent of this message: my card was charged twice", "billing"),
                       ("Classify the intent of this message: the parcel never arrived at my door", "billing")],
                      name="classify")
    assert dedup_check_result(rows, c, hash_encode).passed  # same label is not a duplicate


def test_real_embeddings_catch_a_reworded_response():
    e = EmbedderResource()
    pairs = [("Where is my order?", "Your order shipped yesterday and should arrive within three business days."),
             ("Has my package left?", "Your order was shipped yesterday and it should arrive in three business days.")]
    r = dedup_check_result(clean_rows(pairs), category(), e.encode)
    assert not r.passed and r.metadata["near_duplicate_pairs"].value == 1
