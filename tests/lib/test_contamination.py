import pandas as pd

from distill_assets.lib.contamination import category_shared_text, find_contamination, seed_texts, training_texts
from distill_assets.lib.shared_text import NOTHING_SHARED, find_shared_text
from tests.checks.helpers import category, clean_rows, eval_frame, hash_encode, seed_pairs, seeds


def cfg():
    return category().contamination


def test_eval_answer_pasted_into_a_response_is_caught_by_13grams():
    ev = eval_frame()
    item = ev[ev["reference_response"].notna()].iloc[0]
    train = training_texts(clean_rows(seed_pairs(n=5) + [("Any tips on this?", item["reference_response"])]))
    m = find_contamination(train, ev, cfg(), None)
    assert set(m["rule"]) == {"contaminated_13gram"}  # 8-grams compare against eval questions only
    assert set(m["train_field"]) == {"response"} and set(m["eval_field"]) == {"reference_response"}


def test_short_eval_text_is_matched_whole():
    ev = pd.DataFrame([{"eval_id": "e1", "prompt": "Where is my parcel right now?", "reference_response": None}])
    train = pd.DataFrame([{"example_id": "x", "instruction": "Hi. WHERE is my parcel, right now? Thanks",
                           "response": "ok"}])
    m = find_contamination(train, ev, cfg(), None)
    assert set(m["rule"]) == {"contaminated_13gram", "contaminated_8gram"}
    assert m["ngrams"].iloc[0] == ["where is my parcel right now"]


# ---------------------------------------------------------------- the category's shared text

TEMPLATE = "Classify the intent of this message: "
# new messages in the demo's template, each opening like some eval message ("Is there", "Can you", "Does the",
# "Your app", "Where's my order") and otherwise about something else
NEW_MESSAGES = [
    "Is there a student discount on the noise-cancelling headphones?",
    "Can you tell me if the garden hose comes with a nozzle?",
    "Does the Voyager duffel have a separate shoe compartment?",
    "Your app keeps logging me out whenever I switch to the camera.",
    "Where's my order?? The tracking number doesn't work on the carrier site.",
]


def classify():
    return category("classify")


def eval_with(*prompts: str) -> pd.DataFrame:
    ev = eval_frame("classify")
    extra = pd.DataFrame([{**ev.iloc[0].to_dict(), "eval_id": f"e_extra_{i}", "prompt": p}
                          for i, p in enumerate(prompts)])
    return pd.concat([ev, extra], ignore_index=True)


def rows(instructions: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"example_id": [f"t{i}" for i in range(len(instructions))], "instruction": instructions,
                         "response": ["billing"] * len(instructions)})


def test_template_only_overlap_is_ignored():
    ev = eval_frame("classify")
    train = rows([TEMPLATE + m for m in NEW_MESSAGES])
    raw = find_contamination(train, ev, classify().contamination, None, NOTHING_SHARED)
    assert raw["example_id"].nunique() == len(NEW_MESSAGES)  # without the rule: every one, by the template
    assert all("of this message" in g for gs in raw["ngrams"] for g in gs)  # each straddles the template
    shared = category_shared_text(classify())
    assert find_contamination(train, ev, classify().contamination, None, shared).empty
    assert find_contamination(train, ev, classify().contamination, None).empty  # default: the eval items' own


def test_real_overlap_after_the_template_is_still_caught():
    msg = "I was charged twice for the same order this morning."  # the first classify seed's message
    ev = eval_with(TEMPLATE + msg)
    shared = category_shared_text(classify())
    assert shared.prefix == tuple(TEMPLATE.lower().replace(":", "").split())
    train = seed_texts(seeds("classify"))
    train = pd.concat([train, rows([TEMPLATE + "Hello! " + msg[:-1] + ", please look into it."])],
                      ignore_index=True)
    m = find_contamination(train, ev, classify().contamination, None, shared)
    assert set(m["eval_id"]) == {"e_extra_0"}
    assert set(m["example_id"]) == {train["example_id"].iloc[0], "t0"}
    assert set(m["rule"]) == {"contaminated_8gram", "contaminated_13gram"}  # a 10-word message: whole for 13
    grams = {g for gs in m["ngrams"] for g in gs}
    assert {"i was charged twice for the same order", "i was charged twice for the same order this morning"} <= grams
    assert not any("message" in g for g in grams)


def test_a_message_too_short_for_ngrams_after_its_template_matches_only_verbatim():
    ev = eval_with(TEMPLATE + "Cancel my order.")
    shared = category_shared_text(classify())
    train = rows([TEMPLATE + "Cancel my order.", TEMPLATE + "Cancel my subscription.", "Cancel my order."])
    m = find_contamination(train, ev, classify().contamination, None, shared)
    assert set(m["example_id"]) == {"t0"}
    assert m["ngrams"].iloc[0] == ["classify the intent of this message cancel my order"]


BOILER = "Reply with exactly one label from the list below and nothing else."


def _boiler_frames(n_boiler: int):
    """Support-like prompts where `n_boiler` of 20 eval items (and of 20 seeds) carry BOILER mid-text."""
    def prompt(kind, i):
        body = f"{kind} {i}: my parcel number {1000 + i} went to the wrong town."
        return f"{body} {BOILER} Thanks, customer {i}." if i < n_boiler else body
    ev = pd.DataFrame({"eval_id": [f"e{i}" for i in range(20)], "prompt": [prompt("Eval", i) for i in range(20)],
                       "reference_response": [None] * 20})
    sd = pd.DataFrame({"seed_id": [f"s{i}" for i in range(20)], "prompt": [prompt("Seed", i) for i in range(20)],
                       "reference_response": [None] * 20})
    return ev, sd


def test_frequent_ngrams_inside_the_texts_are_ignored_and_real_overlap_is_not():
    cfg_ = category().contamination
    ev, sd = _boiler_frames(n_boiler=5)
    train = rows([f"New question about returns. {BOILER} Bye.",  # boilerplate only
                  f"Anything: {ev['prompt'].iloc[2]}"])           # a pasted eval item that carries it too
    shared = find_shared_text(sd, ev, cfg_)
    assert (shared.prefix, shared.suffix) == ((), ())
    assert "reply with exactly one label from the list" in shared.ignored(8)
    m = find_contamination(train, ev, cfg_, None, shared)
    assert set(m["example_id"]) == {"t1"} and set(m["eval_id"]) == {"e2"}
    # what matched is e2's own text ("eval 2", "number 1002", "customer 2"), never the boilerplate alone
    assert all({"2", "1002"} & set(g.split()) for gs in m["ngrams"] for g in gs)
    off = find_shared_text(sd, ev, cfg_.model_copy(update={"ignore_frequent_ngrams": False}))
    assert set(find_contamination(train, ev, cfg_, None, off)["example_id"]) == {"t0", "t1"}
    rare = find_shared_text(*reversed(_boiler_frames(n_boiler=3)), cfg_)  # 3 of 20: under 20% and 5 texts
    assert rare.ngrams == {}


def test_embedding_compares_the_messages_not_the_template():
    template = ("Read the customer message below carefully, think about what the customer wants, and then "
                "classify its intent into exactly one of the categories we use in support: ")
    bodies = ["parcel lost somewhere", "wrong size shoes", "coupon code rejected", "app crashes daily",
              "invoice address wrong", "late courier again", "password reset broken", "gift card missing",
              "double charge yesterday", "cancel my plan"]
    ev = pd.DataFrame({"eval_id": [f"e{i}" for i in range(10)], "reference_response": [None] * 10,
                       "prompt": [template + b for b in bodies]})
    train = rows([template + "refund never arrived", template + "wrong size shoes"])
    cfg_ = classify().contamination.model_copy(update={"embed_threshold": 0.9})
    whole = hash_encode([train["instruction"].iloc[0], ev["prompt"].iloc[0]])
    assert float(whole[0] @ whole[1]) >= 0.9  # the template alone makes them near-identical
    seen: list[str] = []

    def spy(texts):
        seen.extend(texts)
        return hash_encode(texts)

    m = find_contamination(train, ev, cfg_, spy, find_shared_text(None, ev, cfg_))
    assert set(m.loc[m["rule"] == "contaminated_embedding", "example_id"]) == {"t1"}
    assert "refund never arrived" in seen and template + "refund never arrived" not in seen
    no_strip = cfg_.model_copy(update={"strip_shared_affixes": False})
    m = find_contamination(train, ev, no_strip, hash_encode, find_shared_text(None, ev, no_strip))
    assert set(m.loc[m["rule"] == "contaminated_embedding", "example_id"]) == {"t0", "t1"}


def test_without_a_template_the_embedded_texts_are_the_texts():
    ev = eval_frame()
    train = training_texts(clean_rows(seed_pairs(n=5)))
    seen: list[str] = []
    find_contamination(train, ev, cfg(), lambda t: seen.extend(t) or hash_encode(t))
    assert seen == train["instruction"].tolist() + ev["prompt"].tolist()
