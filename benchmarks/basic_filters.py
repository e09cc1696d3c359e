"""quality_filtered's rules on a synthetic 200k-row raw frame vs a naive per-row Python loop on a subset.

    flock /tmp/distill-bench.lock python benchmarks/basic_filters.py [--rows 200000] [--naive 2000] [--repeat 1]

Prints our time (each repeat; the breakdown is the fastest run's: wall seconds per rule, and thread-seconds per rule
inside the bulk pass), how the language rule was decided, our time without the language rule, and the naive loop
on a subset (extrapolated), with the share of rows where both give the same reason.
"""

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill_assets.lib.filters.language import language_detector  # noqa: E402
from distill_assets.lib.filters.quality import MOJIBAKE, quality_verdicts, repeat_ngram_ratio  # noqa: E402
from distill_assets.lib.tasks import Filters  # noqa: E402
from distill_assets.lib.tokenizer import student_tokenizer  # noqa: E402

WORDS = ("the order refund account shipping password reset parcel carrier days page click email link support "
         "team help please thanks within business warehouse return item price discount code store").split()


def synth(n, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.random()
        resp = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120))) + "."
        if k < 0.03:
            resp = "ok"
        elif k < 0.05:
            resp = "I'm sorry, I can't help with that request. " + resp
        elif k < 0.06:
            resp = resp.replace("the", "th\u00c3\u00a9", 1)
        elif k < 0.07:
            resp = " ".join(["please reset the password now"] * 12)
        elif k < 0.08:
            resp = "Bonjour, votre commande est en route et arrivera dans trois jours ouvrables, merci beaucoup."
        msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": f"question {i}"},
                {"role": "assistant", "content": resp}]
        rows.append({"example_id": f"e{i}", "messages": json.dumps(msgs), "response": resp})
    return pd.DataFrame(rows)


def naive(df, f, tok, det):
    """One row at a time: json.loads, tokenize, each regex, n-grams, language detection."""
    from lingua import IsoCode639_1
    refusal = [re.compile(p) for p in f.refusal_patterns]
    out = []
    for r in df.itertuples():
        msgs = json.loads(r.messages)
        resp = msgs[-1]["content"]
        ntok = len(tok(resp, add_special_tokens=False)["input_ids"])
        if not resp.strip():
            out.append("empty")
        elif MOJIBAKE.search(resp):
            out.append("encoding_error")
        elif ntok < f.min_tokens:
            out.append("too_short")
        elif ntok > f.max_tokens:
            out.append("too_long")
        elif any(p.search(resp) for p in refusal):
            out.append("refusal")
        elif len(re.findall(r"(?:[ \t]*\n){3,}", resp)) > f.max_blank_run:
            out.append("excess_whitespace")
        elif repeat_ngram_ratio(resp) > f.max_repeat_ngram_ratio:
            out.append("repetitive")
        else:
            lang = det.detect_language_of(resp[:400])
            out.append("wrong_language" if lang is not None and lang.iso_code_639_1 != IsoCode639_1.EN else "")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--naive", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=1, help="time ours this many times (the machine is shared)")
    args = ap.parse_args()
    f = Filters()
    tok = student_tokenizer()
    det = language_detector("en")
    df = synth(args.rows)
    quality_verdicts(df.head(200), f, tokenizer=tok)  # warm-up: vocab bound, detector models, lexicon
    runs = []
    for _ in range(max(1, args.repeat)):
        tm: dict[str, float] = {}
        t = time.perf_counter()
        v = quality_verdicts(df, f, tokenizer=tok, timings=tm)
        runs.append((time.perf_counter() - t, tm))
    ours, timings = min(runs, key=lambda r: r[0])
    each = f" (runs: {', '.join(f'{r[0]:.2f}' for r in runs)})" if len(runs) > 1 else ""
    print(f"ours:  {len(df)} rows in {ours:6.2f} s ({len(df) / ours:,.0f} rows/s){each}; "
          f"drops {v.loc[~v['keep'], 'reason'].value_counts().to_dict()}")
    wall = {k: s for k, s in timings.items() if not k.startswith("bulk:")}
    print("  per rule, wall (s): " + ", ".join(f"{k} {s:.2f}" for k, s in wall.items())
          + f"; other {ours - sum(wall.values()):.2f}")
    print("  inside the bulk pass, thread-seconds: "
          + ", ".join(f"{k[5:]} {s:.2f}" for k, s in timings.items() if k.startswith("bulk:")))
    methods = pd.Series([e.get("method") or ("detector" if "confidence" in e else e["language"])
                         for e in v["evidence"] if isinstance(e, dict) and "language" in e]).value_counts().to_dict()
    print(f"  language decided by: {methods}")
    t = time.perf_counter()
    quality_verdicts(df, f.model_copy(update={"language": None}), tokenizer=tok)
    nolang = time.perf_counter() - t
    print(f"ours without the language rule: {nolang:6.2f} s (language id = {ours - nolang:6.2f} s of the total)")
    sub = df.head(args.naive)
    t = time.perf_counter()
    ref = naive(sub, f, tok, det)
    nv = time.perf_counter() - t
    ours_sub = quality_verdicts(sub, f, tokenizer=tok)["reason"].tolist()
    agree = sum(a == b for a, b in zip(ref, ours_sub)) / len(ref)
    print(f"naive: {len(sub)} rows in {nv:6.2f} s ({len(sub) / nv:,.0f} rows/s) -> {len(df) * nv / len(sub):,.0f} s "
          f"extrapolated to {len(df)}; speedup {len(df) * nv / len(sub) / ours:.1f}x; same reasons on "
          f"{agree:.1%} of the subset")


if __name__ == "__main__":
    main()
