"""Contamination: does training text overlap the held-out eval set?

Three independent rules, all thresholds from the task file (`Category.contamination`):
- word `ngram_long`-gram overlap (13, the lm-eval-harness / GPT-3 convention) against eval prompts and answers;
- word `ngram_short`-gram overlap (8, the open-r1 convention: a single hit flags the row) against eval prompts;
- embedding cosine of training instructions with eval prompts at or above `embed_threshold` (0.95,
  all-MiniLM-L6-v2), which catches rephrasings that share no n-gram (llm-decontaminator's finding).

Text is normalized before n-grams (lib/text.py normalize_words): lower-cased, punctuation replaced by spaces,
whitespace collapsed.
An eval text shorter than n words (but at least `min_ngram_words`) counts as one whole-text n-gram, so a short
eval question pasted verbatim is still caught.

Text the category's own prompts share (a template prefix/suffix, n-grams frequent across its seeds or eval items;
lib/shared_text.py) is cut from the eval side before indexing and from both sides before embedding. Every caller
(seed check, clean_dataset check, decontaminate stage, intake) passes `category_shared_text`: all ignore the same.
"""


from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from distill_assets.lib import conversation as conv
from distill_assets.lib.eval_set import build_eval_frame
from distill_assets.lib.records import load_eval_file, load_seed_file
from distill_assets.lib.shared_text import NOTHING_SHARED, SharedText, find_shared_text
from distill_assets.lib.tasks import Category, Contamination
from distill_assets.lib.text import normalize_words, word_ngrams
from resources.embedder import EmbedderResource
from resources.store import DuckDBStore

Encode = Callable[[list[str]], np.ndarray]

MATCH_COLUMNS = ["example_id", "eval_id", "rule", "train_field", "eval_field", "ngrams", "n_ngrams", "cosine"]


# ---------------------------------------------------------------- text

def _messages_text(messages: Any, role: str) -> str:
    msgs = conv.loads(messages) or []
    msgs = [m for m in msgs if isinstance(m, dict)]
    return conv.user_text(msgs) if role == "user" else conv.assistant_text(msgs)


def _conversation_texts(messages: pd.Series) -> dict[int, tuple[str, str, str, bool]]:
    """{position: (every user turn, every assistant turn, the near-dup text, whether it ends in a tool call)} of
    the rows that are more than one plain exchange."""
    out = {}
    for i, m in enumerate(messages.tolist()):
        # a plain system/user/assistant row has three roles and no tool calls: skip parsing it
        if not isinstance(m, str) or (m.count('"role"') <= 3 and '"tool_calls"' not in m):
            continue
        msgs = conv.loads(m)
        if msgs and not conv.is_plain_pair(msgs):
            call = bool(msgs[-1].get("tool_calls")) or bool(conv.parse_tool_call_text(msgs[-1].get("content")))
            near = conv.message_text(msgs[-1]) if call else conv.transcript(msgs)
            out[i] = (conv.user_text(msgs), conv.assistant_text(msgs), near, call)
    return out


def training_texts(df: pd.DataFrame, id_column: str = "example_id") -> pd.DataFrame:
    """(example_id, instruction, response, dedup_text) of training rows: the `instruction`/`response` columns
    when the table has them (filter stages), otherwise the user and assistant turns of `messages`
    (clean_dataset). A multi-turn or tool-calling row is its whole conversation either way: every user turn (and
    tool result), every assistant turn (tool calls as their text lines), so the filters and the checks compare
    the same text. `dedup_text` is what near-duplicate search compares: the response of a plain row, the whole
    transcript of a conversation. A row that ends in a tool call is compared like a label (`short_answer`): a
    call is formulaic (two look-ups of different orders embed alike), so rows are near-duplicates only when the
    call is the same and the user turns are near-identical."""
    if df.empty:
        return pd.DataFrame(columns=["example_id", "instruction", "response", "dedup_text", "short_answer"])
    msgs = df["messages"] if "messages" in df.columns else pd.Series([None] * len(df))
    if "instruction" in df.columns and "response" in df.columns:
        ins, resp = df["instruction"], df["response"]
    elif "messages" in df.columns:
        ins = df["messages"].map(lambda m: _messages_text(m, "user"))
        resp = df["messages"].map(lambda m: _messages_text(m, "assistant"))
    else:
        raise KeyError("training rows need instruction/response columns or a messages column")
    ins = ins.fillna("").astype(str).to_numpy(dtype=object).copy()
    resp = resp.fillna("").astype(str).to_numpy(dtype=object).copy()
    dedup = resp.copy()
    short = np.zeros(len(df), dtype=bool)
    for i, (u, a, t, call) in _conversation_texts(msgs).items():
        ins[i], resp[i], dedup[i], short[i] = u, a, t, call
    return pd.DataFrame({"example_id": df[id_column].astype(str).to_numpy(), "instruction": ins, "response": resp,
                         "dedup_text": dedup, "short_answer": short})


def seed_texts(seeds: pd.DataFrame) -> pd.DataFrame:
    """Seeds as training-like rows: the prompt (every user turn and tool result of a conversation seed) is the
    instruction, the reference response the response."""
    if seeds.empty:
        return pd.DataFrame(columns=["example_id", "instruction", "response"])
    msgs = seeds["messages"] if "messages" in seeds.columns else pd.Series([None] * len(seeds))
    prompts = [conv.user_text(m) if m else p for p, m in zip(seeds["prompt"].fillna("").astype(str),
                                                             (conv.loads(v) for v in msgs))]
    return pd.DataFrame({
        "example_id": seeds["seed_id"].astype(str).to_numpy(),
        "instruction": prompts,
        "response": (seeds["reference_response"] if "reference_response" in seeds.columns
                     else pd.Series([""] * len(seeds))).fillna("").astype(str).to_numpy(),
    })


# ---------------------------------------------------------------- n-gram index

@dataclass
class NgramIndex:
    """Eval n-grams -> the eval items (and fields) they come from."""

    n: int
    grams: dict[str, set[tuple[str, str]]] = field(default_factory=lambda: defaultdict(set))
    whole: dict[int, dict[str, set[tuple[str, str]]]] = field(default_factory=dict)  # short texts by length

    def matches(self, text: str) -> dict[tuple[str, str], list[str]]:
        """(eval_id, eval_field) -> the matching n-grams of `text`."""
        words = normalize_words(text)
        out: dict[tuple[str, str], list[str]] = defaultdict(list)
        if len(words) >= self.n:
            for g in word_ngrams(words, self.n):
                for key in self.grams.get(g, ()):
                    out[key].append(g)
        for k, table in self.whole.items():
            if len(words) >= k:
                for g in word_ngrams(words, k):
                    for key in table.get(g, ()):
                        out[key].append(g)
        return {k: sorted(v) for k, v in out.items()}


def build_index(evalset: pd.DataFrame, n: int, fields: Iterable[str], min_words: int,
                shared: SharedText = NOTHING_SHARED) -> NgramIndex:
    """Eval n-grams, without the category's shared template and frequent n-grams. Training texts are matched
    unstripped: the index holds no template words, so a template alone can never match."""
    idx = NgramIndex(n=n)
    ignored = shared.ignored(n)
    for eid, row in zip(evalset["eval_id"].astype(str), evalset.to_dict("records")):
        for f in fields:
            words = normalize_words(row.get(f))
            body = shared.strip_words(words)
            if len(body) >= n:
                for g in word_ngrams(body, n):
                    if g not in ignored:
                        idx.grams[g].add((eid, f))
                continue
            if len(body) < min_words and body and len(body) < len(words) and len(words) >= min_words:
                body = words  # too short a message after its template: only a verbatim copy, template and all
            if len(body) >= min_words:
                idx.whole.setdefault(len(body), defaultdict(set))[" ".join(body)].add((eid, f))
    return idx


# ---------------------------------------------------------------- detection

def rule_names(cfg: Contamination) -> tuple[str, str, str]:
    return f"contaminated_{cfg.ngram_long}gram", f"contaminated_{cfg.ngram_short}gram", "contaminated_embedding"


def cosine_pairs(a: np.ndarray, b: np.ndarray, threshold: float, block: int = 4096) -> list[tuple[int, int, float]]:
    """(i, j, cosine) with a[i]·b[j] >= threshold; vectors are L2-normalized. Blocked to bound memory."""
    out: list[tuple[int, int, float]] = []
    if len(a) == 0 or len(b) == 0:
        return out
    for s in range(0, len(a), block):
        sims = a[s:s + block] @ b.T
        ii, jj = np.nonzero(sims >= threshold)
        out.extend((int(i) + s, int(j), float(sims[i, j])) for i, j in zip(ii, jj))
    return out


def find_contamination(train: pd.DataFrame, evalset: pd.DataFrame, cfg: Contamination,
                       encode: Encode | None, shared: SharedText | None = None) -> pd.DataFrame:
    """Every (training row, eval item, rule) hit with its evidence; `train` has example_id, instruction, response.

    `encode` (texts -> normalized vectors) drives the embedding rule and the cosine reported for n-gram hits;
    None skips both (pure n-gram use). `shared`: what the category's texts share (`category_shared_text`);
    None computes it from the eval items alone."""
    if train.empty or evalset.empty:
        return pd.DataFrame(columns=MATCH_COLUMNS)
    if shared is None:
        shared = find_shared_text(None, evalset, cfg)
    long_rule, short_rule, embed_rule = rule_names(cfg)
    rows: list[dict[str, Any]] = []
    for rule, n, fields in [(long_rule, cfg.ngram_long, cfg.long_eval_fields),
                            (short_rule, cfg.ngram_short, cfg.short_eval_fields)]:
        idx = build_index(evalset, n, fields, cfg.min_ngram_words, shared)
        for tf in ("instruction", "response"):
            for ex_id, text in zip(train["example_id"], train[tf]):
                for (eid, ef), grams in idx.matches(text).items():
                    rows.append({"example_id": ex_id, "eval_id": eid, "rule": rule, "train_field": tf,
                                 "eval_field": ef, "ngrams": grams[:10], "n_ngrams": len(grams), "cosine": None})
    if encode is not None:
        # the messages, not the template: two templated prompts are near-identical whatever they ask
        t_vec = encode([shared.strip_text(t) for t in train["instruction"]])
        e_vec = encode([shared.strip_text(t) for t in evalset["prompt"].fillna("").astype(str)])
        eval_ids = evalset["eval_id"].astype(str).tolist()
        ex_ids = train["example_id"].tolist()
        for i, j, cos in cosine_pairs(t_vec, e_vec, cfg.embed_threshold):
            rows.append({"example_id": ex_ids[i], "eval_id": eval_ids[j], "rule": embed_rule,
                         "train_field": "instruction", "eval_field": "prompt", "ngrams": [], "n_ngrams": 0,
                         "cosine": round(cos, 4)})
        pos_t = {e: i for i, e in enumerate(ex_ids)}
        pos_e = {e: j for j, e in enumerate(eval_ids)}
        for r in rows:
            if r["cosine"] is None:
                r["cosine"] = round(float(t_vec[pos_t[r["example_id"]]] @ e_vec[pos_e[r["eval_id"]]]), 4)
    return pd.DataFrame(rows, columns=MATCH_COLUMNS)


def flag_rows(train: pd.DataFrame, matches: pd.DataFrame, cfg: Contamination) -> pd.DataFrame:
    """One verdict per training row: contaminated?, the strongest rule as reason, and the evidence list."""
    order = {r: i for i, r in enumerate(rule_names(cfg))}
    by_row: dict[str, list[dict]] = defaultdict(list)
    for r in matches.to_dict("records"):
        by_row[r["example_id"]].append(r)
    reasons, evidence = [], []
    for ex_id in train["example_id"]:
        hits = sorted(by_row.get(ex_id, []), key=lambda r: (order.get(r["rule"], 9), -(r["cosine"] or 0)))
        reasons.append(hits[0]["rule"] if hits else "")
        evidence.append({"matches": [
            {k: h[k] for k in ("eval_id", "rule", "train_field", "eval_field", "ngrams", "n_ngrams", "cosine")}
            for h in hits[:10]
        ], "n_matches": len(hits)} if hits else {})
    return pd.DataFrame({"example_id": train["example_id"].to_numpy(), "contaminated": [bool(r) for r in reasons],
                         "reason": reasons, "evidence": evidence})


def held_out(eval_set: pd.DataFrame, category: Category, store: DuckDBStore) -> pd.DataFrame:
    """The partition's eval_set; when it was never materialized, the same rows built from the task's eval file,
    so checking seeds or training data never depends on materialization order (and never passes vacuously)."""
    if not eval_set.empty:
        return eval_set
    return build_eval_frame(category, store)


def category_shared_text(category: Category) -> SharedText:
    """What the category's seed and eval files share: the one input of every contamination caller (checks,
    decontaminate stage, intake), so all ignore exactly the same text. The task files only: held-out production
    failures (one problem reported many times) must not become "boilerplate" that hides a copy of them."""
    return find_shared_text(load_seed_file(category.seeds, category), load_eval_file(category.eval, category),
                            category.contamination)


def encoder(embedder: EmbedderResource, store: DuckDBStore) -> Encode:
    return lambda texts: embedder.encode_cached(texts, store)
