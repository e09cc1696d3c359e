"""The scale benchmark's workload: N distinct English seed prompts, a small held-out eval file, the task file, and
the answers of the fast local test server (deterministic, varied, a few duplicates, short answers and low scores
so that every filter has work).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from distill_assets.lib.filters.judge import JUDGE_SYSTEM

CATEGORY = "bench"

_VERBS = ("configure", "replace", "clean", "repair", "organize", "choose", "store", "paint", "measure", "install",
          "protect", "plan", "prepare", "schedule", "insure", "label", "sort", "test", "update", "move", "budget",
          "track", "mount", "seal", "heat", "cool", "decorate", "water", "charge", "ship")
_ADJS = ("old", "small", "wooden", "electric", "outdoor", "broken", "heavy", "fragile", "shared", "second-hand",
         "noisy", "expensive", "portable", "rusty", "tiny", "huge", "modern", "leaky", "borrowed", "antique",
         "folding", "metal", "glass", "cotton", "rented", "spare", "damp", "new", "cheap", "family")
_NOUNS = ("bicycle", "garden hose", "kitchen sink", "bookshelf", "water heater", "laptop", "sofa", "ceiling fan",
          "garage door", "fish tank", "lawn mower", "window frame", "dishwasher", "piano", "tent", "printer",
          "roof gutter", "fence", "wardrobe", "boiler", "doorbell", "greenhouse", "car battery", "bathtub",
          "camera", "suitcase", "heater", "treadmill", "balcony", "mattress", "chimney", "freezer", "kayak",
          "guitar", "staircase", "shed", "router", "oven", "lamp", "desk")
_PLACES = ("a small apartment", "a rainy city", "a farmhouse", "a student dorm", "a beach house", "a basement",
           "a mountain cabin", "a shared office", "a houseboat", "an old barn", "a busy flat", "a quiet village",
           "a windy island", "a city loft", "a garden studio", "a caravan", "a rented room", "a warehouse",
           "a school hall", "a holiday home", "a log cabin", "a corner shop", "a cold attic", "a hot desert town",
           "a ferry", "a farm shop", "a workshop", "a bakery", "a narrow terrace", "a top floor")
_CONSTRAINTS = ("without spending much money", "before the winter starts", "with only basic tools",
                "while the kids are at school", "in under an hour", "without calling a professional",
                "when I have a bad back", "on a very tight schedule", "with help from a neighbour",
                "so that it lasts for years", "without making a mess", "using recycled materials",
                "before guests arrive", "safely on my own", "while keeping the noise down")
_TEMPLATES = ("How do I {v} the {a} {n} in {p} {c}?",
              "What is the best way to {v} a {a} {n} for {p} {c}?",
              "Can you explain how to {v} my {a} {n} in {p} {c}?",
              "I need to {v} a {a} {n} at {p}. How should I do it {c}?",
              "Give me a step by step plan to {v} the {a} {n} of {p} {c}.",
              "My {a} {n} in {p} needs attention. How can I {v} it {c}?",
              "Which mistakes should I avoid when I {v} a {a} {n} in {p} {c}?",
              "Is it worth it to {v} the {a} {n} in {p} {c}, and how?")
_RADIX = (len(_TEMPLATES), len(_VERBS), len(_ADJS), len(_NOUNS), len(_PLACES), len(_CONSTRAINTS))

_ANSWER_WORDS = {
    "open": ("First", "Start by", "Begin by", "To begin,", "The first step is", "Before anything else,"),
    "act": ("checking", "inspecting", "cleaning", "measuring", "loosening", "tightening", "drying", "marking",
            "removing", "testing", "sanding", "wiping", "draining", "unplugging", "labelling", "photographing"),
    "part": ("the hinges", "every joint", "the main valve", "the outer panel", "the power cable", "each screw",
             "the base plate", "the seals", "the filter", "the frame", "the surface", "the connectors",
             "the drain", "the upper shelf", "the wheels", "the handle", "the lid", "the wiring"),
    "tool": ("a soft cloth", "a small brush", "a screwdriver", "a spirit level", "some warm soapy water",
             "a pair of gloves", "an old towel", "a tape measure", "a torch", "a bucket", "fine sandpaper",
             "a spanner", "masking tape", "a vacuum cleaner", "a notebook", "a ladder"),
    "why": ("so nothing gets scratched", "because dust hides small cracks", "to avoid a second trip to the shop",
            "since damp wood swells quickly", "which keeps the warranty valid", "so the parts fit again later",
            "because loose parts wear out faster", "to keep everyone safe", "which saves energy over time",
            "so you can spot wear early", "because rust spreads under paint", "to stop water getting in"),
    "then": ("Next,", "After that,", "Then", "Once that is done,", "When it is dry,", "Finally,", "Afterwards,"),
    "close": ("Check the result after a week.", "Keep the receipt and the manual together.",
              "Repeat this every few months.", "Ask a specialist if anything looks unsafe.",
              "Write down what you changed for next time.", "Test it gently before normal use.",
              "Store the spare parts in a labelled box.", "Let it rest overnight before using it."),
}


def seed_prompt(i: int) -> str:
    """The i-th prompt of the mixed-radix product of the word lists: distinct for distinct i."""
    parts = []
    for r in _RADIX:
        parts.append(i % r)
        i //= r
    t, v, a, n, p, c = parts
    return _TEMPLATES[t].format(v=_VERBS[v], a=_ADJS[a], n=_NOUNS[n], p=_PLACES[p], c=_CONSTRAINTS[c])


def capacity() -> int:
    out = 1
    for r in _RADIX:
        out *= r
    return out


def seed_prompts(n: int, seed: int = 0) -> list[str]:
    if n > capacity():
        raise ValueError(f"at most {capacity()} distinct prompts")
    idx = random.Random(seed).sample(range(capacity()), n)
    return [seed_prompt(i) for i in idx]


EVAL_PROMPTS = (
    "Why does the moon look larger near the horizon than high in the sky?",
    "Explain what a black hole's event horizon is to a ten year old.",
    "How far away is the nearest star other than the sun, in light years?",
    "What causes the northern lights and where can they be seen?",
    "Why do astronauts float inside the international space station?",
    "How do telescopes on mountains avoid the blur of the atmosphere?",
    "What is the difference between a comet and an asteroid?",
    "Why is Mars called the red planet by astronomers?",
    "How long does light from the sun take to reach the earth?",
    "What would happen to the tides if the moon disappeared?",
)


def write_workload(root: Path, n: int) -> Path:
    """Seeds, eval items and a one-category task file under `root`; returns the task file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "seeds.jsonl").write_text("".join(
        json.dumps({"prompt": p, "difficulty": "medium", "reference": None}) + "\n" for p in seed_prompts(n)))
    (root / "eval.jsonl").write_text("".join(
        json.dumps({"prompt": p, "difficulty": "medium", "reference": None,
                    "reference_response": f"A short astronomy answer number {k} about the sky."}) + "\n"
        for k, p in enumerate(EVAL_PROMPTS)))
    task = root / "tasks.yaml"
    task.write_text(f"""version: 1
name: scale-benchmark
license: other
categories:
  - name: {CATEGORY}
    description: Practical household maintenance advice.
    system_prompt: You are a practical, careful household maintenance assistant.
    seeds: seeds.jsonl
    eval: eval.jsonl
    samples_per_prompt: 1
    max_tokens: 256
    methods:
      response: {{}}
    verify: none
    yield_band: [0.0, 1.0]
    yield_floor: 0.0
    min_train_examples: 1
""")
    return task


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def answer(user: str) -> str:
    """A varied, deterministic, English answer to `user`. ~2% share another prompt's answer (near-duplicate work
    for dedup) and ~1% are too short for the quality filter."""
    h = _digest(user)
    if h % 100 == 0:
        return "Yes."
    if h % 50 == 1:
        h = h % 997  # one of a few hundred shared answers
    rng = random.Random(h)
    w = _ANSWER_WORDS
    out = [f"{rng.choice(w['open'])} {rng.choice(w['act'])} {rng.choice(w['part'])} with {rng.choice(w['tool'])}, "
           f"{rng.choice(w['why'])}."]
    for _ in range(rng.randint(1, 3)):
        out.append(f"{rng.choice(w['then'])} {rng.choice(w['act'])} {rng.choice(w['part'])} and "
                   f"{rng.choice(w['act'])} {rng.choice(w['part'])}, {rng.choice(w['why'])}.")
    out.append(rng.choice(w["close"]))
    return " ".join(out)


def judgement(user: str) -> str:
    """Scores spread over 3..5 (about a fifth below the default threshold of 4)."""
    score = (3, 4, 4, 5, 5)[_digest(user) % 5]
    return json.dumps({"accuracy": score, "helpfulness": score, "coherence": score, "overall": score,
                       "rationale": "clear steps" if score > 3 else "vague"})


def respond(body: dict) -> str:
    msgs = body.get("messages") or []
    user = next((m.get("content") or "" for m in reversed(msgs) if m.get("role") == "user"), "")
    if msgs and msgs[0].get("content") == JUDGE_SYSTEM:
        return judgement(user)
    return answer(user)
