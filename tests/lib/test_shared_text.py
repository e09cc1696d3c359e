import pandas as pd

from distill_assets.lib.contamination import category_shared_text
from distill_assets.lib.shared_text import NOTHING_SHARED, SharedText, common_prefix, find_shared_text
from distill_assets.lib.text import normalize_words
from tests.checks.helpers import category


def cfg(**update):
    return category("classify").contamination.model_copy(update=update)


def frame(prompts, responses=None, id_col="eval_id"):
    return pd.DataFrame({id_col: [f"x{i}" for i in range(len(prompts))], "prompt": prompts,
                         "reference_response": responses or [None] * len(prompts)})


def test_prefix_needs_the_share_and_the_minimum_count():
    texts = [normalize_words(f"Please classify this: message {i}") for i in range(8)]
    texts += [normalize_words("Something else entirely"), normalize_words("Please answer: no")]
    assert common_prefix(texts, 0.8, 5) == ("please", "classify", "this", "message")  # 8 of 10 share 4 words
    assert common_prefix(texts, 0.9, 5) == ("please",)  # 9 of 10 share one
    assert common_prefix(texts, 0.95, 5) == ()
    assert common_prefix(texts[:4], 0.8, 5) == ()  # four texts agreeing is not a template yet


def test_demo_classify_template_is_its_prefix_and_the_support_category_shares_nothing():
    shared = category_shared_text(category("classify"))
    assert shared.prefix == ("classify", "the", "intent", "of", "this", "message") and shared.suffix == ()
    assert shared.summary()["computed_from"] == {"seeds": 75, "eval_items": 50}
    support = category_shared_text(category("support"))
    assert (support.prefix, support.suffix, support.ngrams) == ((), (), {})
    assert support.describe() == ""


def test_suffix_is_found_after_the_prefix_is_cut():
    prompts = [f"Label this: ticket {i} about topic {i}. Answer with one word." for i in range(10)]
    shared = find_shared_text(None, frame(prompts), cfg())
    assert shared.prefix == ("label", "this", "ticket")
    assert shared.suffix == ("answer", "with", "one", "word")
    assert shared.strip_text(prompts[3]) == "3 about topic 3."
    assert "prefix 'label this ticket'" in shared.describe() and "suffix 'answer with one word'" in shared.describe()


def test_strip_text_cuts_the_original_at_the_template_words():
    shared = SharedText(prefix=("classify", "the", "intent", "of", "this", "message"))
    assert shared.strip_text("Classify the intent of this message: I'd like a refund!") == "I'd like a refund!"
    assert shared.strip_text("classify THE intent of this message --\n`x_y(z)` failed") == "--\n`x_y(z)` failed"
    assert shared.strip_text("Classify the intent of this message:") == "Classify the intent of this message:"
    assert shared.strip_text("No template here.") == "No template here."
    assert NOTHING_SHARED.strip_text("Classify the intent of this message: hi") == (
        "Classify the intent of this message: hi")


def test_frequent_ngrams_are_counted_per_collection_and_once_per_item():
    boiler = "please reply with exactly one label from the list below and nothing else"
    evals = frame([f"Ticket {i} says the parcel {i} is late. {boiler} {boiler}. Thanks {i}" for i in range(3)]
                  + [f"Unrelated question number {i} about invoices" for i in range(12)])
    seeds = frame([f"Seed {i} {boiler}" for i in range(5)] + [f"Other seed {i}" for i in range(20)], id_col="seed_id")
    shared = find_shared_text(seeds, evals, cfg())
    grams = shared.ignored(8)
    assert "reply with exactly one label from the list" in grams
    assert grams["reply with exactly one label from the list"] == 0.2  # 5 of 25 seeds; 3 of 15 evals is below 5
    assert not any("parcel" in g for g in grams)
    assert shared.summary()["ignored_ngrams"]["8"]["count"] == len(grams)
    # the same three eval items alone: below shared_min_texts, nothing is frequent
    assert find_shared_text(None, evals, cfg()).ngrams == {}


def test_both_rules_can_be_switched_off():
    prompts = [f"Classify the intent of this message: question {i} please reply in one word" for i in range(10)]
    off = find_shared_text(None, frame(prompts), cfg(strip_shared_affixes=False, ignore_frequent_ngrams=False))
    assert (off.prefix, off.suffix, off.ngrams) == ((), (), {})
    on = find_shared_text(None, frame(prompts), cfg())
    assert on.prefix and on.suffix == ("please", "reply", "in", "one", "word")
