import dagster as dg

from checks.clean_dataset import dedup_check_result
from distill_assets.defs.resources import embedded_embedder
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


def test_label_task_embeds_instruction_with_label():
    c = category("classify")
    rows = clean_rows([("Classify the intent of this message: my card was charged twice", "billing"),
                       ("Classify the intent of this message: the parcel never arrived at my door", "billing")],
                      name="classify")
    assert dedup_check_result(rows, c, hash_encode).passed  # same label is not a duplicate


def test_real_embeddings_catch_a_reworded_response():
    e = embedded_embedder()
    pairs = [("Where is my order?", "Your order shipped yesterday and should arrive within three business days."),
             ("Has my package left?", "Your order was shipped yesterday and it should arrive in three business days.")]
    r = dedup_check_result(clean_rows(pairs), category(), e.encode)
    assert not r.passed and r.metadata["near_duplicate_pairs"].value == 1
