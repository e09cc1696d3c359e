"""Shared fixtures-as-functions for the check tests: clean frames built from the demo seeds (which share no
n-gram with, and are far in embedding space from, the demo eval set), and a fast deterministic encoder."""

import hashlib
import json

import numpy as np
import pandas as pd

from distill_assets.lib.records import load_eval_file, load_seed_file
from distill_assets.lib.tasks import load_tasks
from distill_assets.lib.text import normalize_words

CATEGORY_NAME = "support"


def category(name: str = CATEGORY_NAME):
    return load_tasks().category(name)


def eval_frame(name: str = CATEGORY_NAME) -> pd.DataFrame:
    return load_eval_file(category(name).eval, category(name))


def seeds(name: str = CATEGORY_NAME) -> pd.DataFrame:
    return load_seed_file(category(name).seeds, category(name))


def messages(system: str, user: str, assistant: str) -> str:
    return json.dumps([{"role": "system", "content": system}, {"role": "user", "content": user},
                       {"role": "assistant", "content": assistant}])


def clean_rows(pairs: list[tuple[str, str]], name: str = CATEGORY_NAME) -> pd.DataFrame:
    """A clean_dataset partition from (instruction, response) pairs; every 5th row is validation."""
    cat = category(name)
    rows = []
    for i, (ins, resp) in enumerate(pairs):
        gid = "g_" + hashlib.sha256(f"{ins}\x1f{resp}\x1f{i}".encode()).hexdigest()[:16]
        rows.append({"example_id": gid, "category": name, "messages": messages(cat.system_prompt, ins, resp),
                     "split": "validation" if i % 5 == 4 else "train", "seed_id": f"s_{i}", "method": "response",
                     "difficulty": "easy", "source": "seed", "generation_id": gid})
    return pd.DataFrame(rows)


def seed_pairs(name: str = CATEGORY_NAME, n: int | None = None) -> list[tuple[str, str]]:
    """(seed prompt, a response made of the prompt's words in reverse order): distinct rows, no eval overlap."""
    prompts = seeds(name)["prompt"].tolist()[:n]
    return [(p, "Here is the answer: " + " ".join(reversed(p.split()))) for p in prompts]


def clean_frame(name: str = CATEGORY_NAME, n: int | None = None) -> pd.DataFrame:
    return clean_rows(seed_pairs(name, n), name)


def hash_encode(texts: list[str], dim: int = 512) -> np.ndarray:
    """Bag-of-words hashing vectors, L2-normalized: identical word bags give cosine 1, unrelated texts ~0."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in normalize_words(t):
            out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % dim] += 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms == 0, 1, norms)
