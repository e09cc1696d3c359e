"""`judged` (filter 3 of 5): LLM-as-judge quality scoring, 1-5 on accuracy, helpfulness, coherence.

The judge is asked for a short JSON object, sent as structured output (a JSON schema: constrained decoding on
llama.cpp and vLLM, strict mode on OpenAI), so even the embedded 135M judge answers in a readable form.
Servers without structured output (`structured_output: off`) get the same prompt, and any reasonable answer is
accepted ("4", "Score: 4/5", "**Overall quality: 4**", JSON in a fence). An answer that cannot be read is never turned into a score:
it is asked once more, and if still unreadable the row gets its own reason `judge_unparseable` (distilabel
#55 crashed on "7.5"; openai/evals #1712 turned unparseable into the minimum score). A judge call that
fails outright is `judge_error`, quarantined rather than scored low, so a rerun re-judges it.

`score_signal` flags a judge that gives (nearly) one score to everything: its threshold then keeps or drops
rows by that one score, not by their quality, and the `judged` asset says so in its metadata.
"""


import json
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from distill_assets.lib import conversation as conv
from distill_assets.lib.stages import annotate
from distill_assets.lib.tasks import Category
from resources.llm import ChatRequest, ChatResult

SUBSCORES = ("accuracy", "helpfulness", "coherence")
SCALE_MIN, SCALE_MAX = 1.0, 5.0

JUDGE_SYSTEM = "You are a strict, impartial grader of training data for a small assistant model."
# The rubric: accuracy, helpfulness, coherence and an overall 1-5, asked for as JSON that is easy to parse.
JUDGE_TEMPLATE = """Rate this instruction-response pair on:
- Accuracy (is the response correct?)
- Helpfulness (does it address the instruction?)
- Coherence (is it well-written?)
Overall quality: 1-5 (5 = excellent, 1 = unusable).
Task: {description}
{reference}
Instruction: {instruction}

Response: {response}

Answer with JSON only, like {{"accuracy": 4, "helpfulness": 4, "coherence": 5, "overall": 4, "rationale": "one short sentence"}}"""

def judge_schema(max_tokens: int) -> dict:
    """The JSON schema of a verdict, sent as structured output: integer scores first, then a rationale short
    enough that the whole object fits in `max_tokens` (about 2 characters a token, ~30 tokens of scores)."""
    score = {"type": "integer", "enum": [1, 2, 3, 4, 5]}
    return {
        "type": "object",
        "properties": {**{k: score for k in SUBSCORES}, "overall": score,
                       "rationale": {"type": "string", "maxLength": max(24, (max_tokens - 32) * 2)}},
        "required": [*SUBSCORES, "overall", "rationale"],
        "additionalProperties": False,
    }


RETRY_NUDGE = ('Your answer could not be read. Reply with only the JSON object, for example '
               '{"accuracy": 3, "helpfulness": 4, "coherence": 4, "overall": 4, "rationale": "..."}')


# parsing -------------------------------------------------------------------------------------------------------
@dataclass
class JudgeParse:
    overall: float | None
    scores: dict = field(default_factory=dict)
    rationale: str = ""
    ok: bool = False
    problem: str = ""  # why it is unparseable
    source: str = ""  # json | overall | score | fraction | bare | subscores_mean


_NUM = r"(\d+(?:\.\d+)?)"
_WORDS = {"one": "1", "two": "2", "three": "3", "four": "4", "five": "5"}


def _scale(value: float, denominator: float | None) -> tuple[float | None, str]:
    """A score on 1-5. Only an explicit '/10' is rescaled; anything else out of range is unreadable."""
    if denominator is not None:
        if denominator == 5:
            pass
        elif denominator == 10:
            value = value / 2.0
            if not (0 <= value <= SCALE_MAX):
                return None, f"out of range: {value * 2:g}/10"
            return value, ""
        else:
            return None, f"unsupported scale /{denominator:g}"
    if not (SCALE_MIN <= value <= SCALE_MAX):
        return None, f"out of range: {value:g} (scale is 1-5)"
    return value, ""


def _num(v) -> tuple[float | None, str]:
    """A JSON value as a 1-5 score: 4, 4.0, "4", "4/5", "8/10"."""
    if isinstance(v, bool) or v is None:
        return None, "not a number"
    if isinstance(v, (int, float)):
        return (_scale(float(v), None) if math.isfinite(v) else (None, "not finite"))
    if isinstance(v, str):
        m = re.fullmatch(rf"\s*\**\s*{_NUM}\s*(?:/\s*(\d+)|out of\s*(\d+))?\s*\**\s*", v, re.IGNORECASE)
        if m:
            den = m.group(2) or m.group(3)
            return _scale(float(m.group(1)), float(den) if den else None)
    return None, f"not a number: {str(v)[:40]!r}"


def _json_objects(text: str) -> list[dict]:
    """JSON objects in the text: fenced ```json blocks first, then every balanced {...}."""
    found = []
    candidates = re.findall(r"```(?:json|JSON)?\s*(\{.*?\})\s*```", text, re.DOTALL)
    starts = [i for i, c in enumerate(text) if c == "{"]
    for s in starts:
        depth, in_str, esc = 0, False, False
        for j in range(s, len(text)):
            c = text[j]
            if in_str:
                esc = (c == "\\" and not esc)
                if c == '"' and not esc:
                    in_str = False
                if c != "\\":
                    esc = False
                continue
            if c == '"':
                in_str = True
            elif c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    candidates.append(text[s:j + 1])
                    break
    for c in candidates:
        try:
            obj = json.loads(c)
        except ValueError:
            try:  # single quotes / trailing commas from small models
                obj = json.loads(re.sub(r",\s*}", "}", c.replace("'", '"')))
            except ValueError:
                continue
        if isinstance(obj, dict):
            found.append(obj)
    return found


def _from_json(obj: dict) -> JudgeParse | None:
    low = {str(k).strip().lower().replace(" ", "_"): v for k, v in obj.items()}
    for nest in ("scores", "score", "ratings"):
        if isinstance(low.get(nest), dict):
            low = {**{str(k).lower(): v for k, v in low[nest].items()}, **{k: v for k, v in low.items() if k != nest}}
    rationale = ""
    for k in ("rationale", "reason", "reasoning", "explanation", "justification", "comment"):
        if isinstance(low.get(k), str):
            rationale = low[k]
            break
    scores, problems = {}, []
    for k in SUBSCORES:
        if k in low:
            v, p = _num(low[k])
            if v is not None:
                scores[k] = v
            else:
                problems.append(f"{k}: {p}")
    for k in ("overall", "overall_quality", "overall_score", "score", "rating", "quality"):
        if k in low and not isinstance(low[k], dict):
            v, p = _num(low[k])
            if v is None:
                return JudgeParse(None, scores, rationale, False, f"overall {p}", "json")
            return JudgeParse(v, {**scores, "overall": v}, rationale, True, "", "json")
    if len(scores) == len(SUBSCORES) and not problems:
        mean = sum(scores.values()) / len(scores)
        return JudgeParse(mean, {**scores, "overall": mean, "overall_derived": "mean"}, rationale, True, "",
                          "subscores_mean")
    if scores or problems or rationale:
        return JudgeParse(None, scores, rationale, False, "; ".join(problems) or "no overall score", "json")
    return None


def parse_judge_answer(text: str | None) -> JudgeParse:
    """Read a 1-5 verdict from a judge answer. Never guesses: unreadable -> ok=False with `problem`."""
    if text is None or not str(text).strip():
        return JudgeParse(None, ok=False, problem="empty answer")
    raw = str(text)
    for obj in _json_objects(raw):
        p = _from_json(obj)
        if p is not None:
            return p
    t = re.sub(r"\*\*|__|`", "", raw)
    t = re.sub(r"\b(one|two|three|four|five)\b", lambda m: _WORDS[m.group(1).lower()], t, flags=re.IGNORECASE)
    scores = {}
    for k in SUBSCORES:
        m = re.search(rf"\b{k}\b\s*(?:\([^)\n]*\))?\s*[:=\-]\s*{_NUM}\s*(?:/\s*(\d+))?", t, re.IGNORECASE)
        if m:
            v, _ = _scale(float(m.group(1)), float(m.group(2)) if m.group(2) else None)
            if v is not None:
                scores[k] = v
    rationale = ""
    m = re.search(r"\b(?:rationale|reason|explanation|justification)\s*[:\-]\s*(.+)", t, re.IGNORECASE | re.DOTALL)
    if m:
        rationale = m.group(1).strip()[:500]

    def done(value_den: tuple[str, str | None], source: str) -> JudgeParse:
        v, problem = _scale(float(value_den[0]), float(value_den[1]) if value_den[1] else None)
        if v is None:
            return JudgeParse(None, scores, rationale or raw.strip()[:500], False, problem, source)
        return JudgeParse(v, {**scores, "overall": v}, rationale or _rationale_from(raw), True, "", source)

    patterns = [
        ("overall", rf"\boverall[\"']?(?:\s+(?:quality|score|rating))?[\"']?\s*(?:\([^)\n]*\))?\s*(?:is|[:=\-])?\s*{_NUM}"
                    rf"\s*(?:/\s*(\d+)|out of\s*(\d+))?"),
        ("score", rf"\b(?:score|rating|grade)\s*(?:is|[:=\-])\s*{_NUM}\s*(?:/\s*(\d+)|out of\s*(\d+))?"),
        ("fraction", rf"(?<![\d.]){_NUM}\s*(?:/\s*(\d+)|out of\s*(\d+))"),
        ("rate", rf"\b(?:rate|give)\s+(?:it|this|the\s+\w+)?\s*(?:an?\s+)?{_NUM}(?:\s*/\s*(\d+)|\s*out of\s*(\d+))?"
                 rf"(?!\d|\.\d)"),
    ]
    for source, pat in patterns:
        m = re.search(pat, t, re.IGNORECASE)
        if m:
            return done((m.group(1), m.group(2) or m.group(3)), source)
    m = re.fullmatch(rf"\W*{_NUM}\W*", t.strip())
    if m:
        return done((m.group(1), None), "bare")
    if len(scores) == len(SUBSCORES):
        mean = sum(scores.values()) / len(scores)
        return JudgeParse(mean, {**scores, "overall": mean, "overall_derived": "mean"},
                          rationale or _rationale_from(raw), True, "", "subscores_mean")
    return JudgeParse(None, scores, rationale, False, "no score found", "")


def _rationale_from(raw: str) -> str:
    lines = [l.strip() for l in raw.strip().splitlines() if l.strip()]
    text = " ".join(l for l in lines if not re.fullmatch(r"[\W\d]*", l))
    return text[:500]


# the stage ---------------------------------------------------------------------------------------------------
def _instruction_shown(row: dict, cat: Category, limit: int) -> str:
    """The instruction as the judge reads it: for a conversation, every earlier turn (most recent kept when
    it is long) and then the last user turn, so only the final assistant turn is rated, in its context."""
    msgs = conv.loads(row.get("messages"))
    last = str(row.get("instruction") or "")
    tools = f"Functions the assistant may call:\n{conv.tools_brief(cat.tools_json())}\n" if cat.tools else ""
    if not msgs or conv.is_plain_pair(msgs):
        return (tools[:max(0, limit - len(last))] + last)[:limit]  # the request is never the part cut
    turns = [m for m in msgs[:-1] if m.get("role") != "system"]
    # the turns before the final answer; the last of them is the request it answers
    earlier = conv.transcript(turns[:-1], limit=max(0, limit - len(last) - len(tools) - 40))
    final = conv.message_text(turns[-1]) if turns else last
    return f"{tools}Conversation so far:\n{earlier}\nFinal request: {final}"[-limit:] if earlier else \
        f"{tools}{final}"[:limit]


def judge_messages(row: dict, cat: Category) -> list[dict]:
    limit = cat.filters.judge_max_chars
    ref = row.get("reference")
    ref_line = f"Reference answer: {ref}" if isinstance(ref, str) and ref.strip() else ""
    prompt = JUDGE_TEMPLATE.format(description=cat.description, reference=ref_line,
                                   instruction=_instruction_shown(row, cat, limit),
                                   response=str(row.get("response") or "")[:limit])
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}]


def _request(messages: list[dict], cat: Category, sample_index: int, tag) -> ChatRequest:
    max_tokens = cat.filters.judge_max_tokens
    return ChatRequest(messages=messages, temperature=0.0, max_tokens=max_tokens, sample_index=sample_index,
                       json_schema=judge_schema(max_tokens), schema_name="judgement", tag=tag)


def judge_frame(df: pd.DataFrame, cat: Category, complete: Callable[[list[ChatRequest]], list[ChatResult]],
                judge_model: str = "") -> pd.DataFrame:
    """Score every row with the judge and annotate it (pure apart from `complete`, the judge call)."""
    if not cat.filters.judge_enabled:  # every row passes, and the lineage says the judge was off
        out = df.copy()
        out["judge_score"] = pd.Series([float("nan")] * len(out), index=out.index, dtype="float64")
        out["judge_scores"] = pd.Series(["{}"] * len(out), index=out.index, dtype="object")
        out["judge_rationale"] = pd.Series([""] * len(out), index=out.index, dtype="object")
        out["judge_status"] = pd.Series(["disabled"] * len(out), index=out.index, dtype="object")
        return annotate(out, [True] * len(out), ["judge_disabled"] * len(out),
                        [{"judge": "disabled by filters.judge_enabled"}] * len(out))
    rows = df.to_dict("records")
    first = complete([_request(judge_messages(r, cat), cat, 0, i) for i, r in enumerate(rows)]) if rows else []
    parses: list[JudgeParse | None] = [parse_judge_answer(r.content) if r.ok else None for r in first]
    # an unreadable answer is asked once more: a new call (sample_index=1, the answer quoted back) so the
    # cache key differs and a deterministic judge is not simply asked the same thing again
    retry_idx = [i for i, p in enumerate(parses) if p is not None and not p.ok]
    second: dict[int, ChatResult] = {}
    if retry_idx:
        reqs = [_request(judge_messages(rows[i], cat) + [{"role": "assistant", "content": first[i].content},
                                                        {"role": "user", "content": RETRY_NUDGE}], cat, 1, i)
                for i in retry_idx]
        for i, res in zip(retry_idx, complete(reqs)):
            second[i] = res
    keep, reason, evidence, quarantined = [], [], [], []
    score_col, scores_col, rationale_col, status_col = [], [], [], []
    for i, res in enumerate(first):
        final, parse = res, parses[i]
        attempts = [{"call_key": res.call_key, "status": res.status, "raw": res.content, "cached": res.cached}]
        if i in second:
            final = second[i]
            attempts.append({"call_key": final.call_key, "status": final.status, "raw": final.content,
                             "cached": final.cached})
            parse = parse_judge_answer(final.content) if final.ok else None
        ev = {"judge_model": final.model or judge_model, "call_key": final.call_key, "attempts": attempts,
              "min_score": cat.filters.judge_min_score}
        if parse is None:  # the call itself failed after the session's retries
            status = "error"
            keep.append(False)
            quarantined.append(True)
            reason.append("judge_error")
            ev["error"] = final.error or final.status
            score, scores, rationale = float("nan"), {}, ""
        elif not parse.ok:
            status = "unparseable"
            keep.append(cat.filters.judge_keep_unparseable)
            quarantined.append(False)
            reason.append("judge_unparseable")
            ev.update(problem=parse.problem, raw_answer=final.content)
            score, scores, rationale = float("nan"), parse.scores, parse.rationale
        else:
            status = "ok"
            ok = parse.overall >= cat.filters.judge_min_score
            keep.append(ok)
            quarantined.append(False)
            reason.append("ok" if ok else "judge_low_score")
            score, scores, rationale = float(parse.overall), parse.scores, parse.rationale
            ev.update(score=score, scores=scores, rationale=rationale, parsed_from=parse.source)
        score_col.append(score)
        scores_col.append(json.dumps(scores, sort_keys=True))
        rationale_col.append(rationale)
        status_col.append(status)
        evidence.append(ev)
    out = df.copy()
    out["judge_score"] = pd.Series(score_col, index=out.index, dtype="float64")
    out["judge_scores"] = pd.Series(scores_col, index=out.index, dtype="object")
    out["judge_rationale"] = pd.Series(rationale_col, index=out.index, dtype="object")
    out["judge_status"] = pd.Series(status_col, index=out.index, dtype="object")
    return annotate(out, keep, reason, evidence, quarantined)


# is the judge telling rows apart? ------------------------------------------------------------------------------
SIGNAL_MIN_ROWS = 10  # fewer parsed scores say too little about the judge's spread
SIGNAL_MAX_SHARE = 0.9  # one score given to this share of rows or more: no signal
SIGNAL_MIN_STD = 0.5  # or a spread of less than half a point


def score_distribution(df: pd.DataFrame) -> dict[str, int]:
    """Rows per overall score 1-5 (a mean of sub-scores or a /10 score rounded half up), plus the unreadable
    verdicts and the failed judge calls."""
    out = {str(k): 0 for k in range(int(SCALE_MIN), int(SCALE_MAX) + 1)}
    if df.empty:
        return {**out, "unparseable": 0, "judge_error": 0}
    for v in df["judge_score"].dropna():
        out[str(int(math.floor(float(v) + 0.5)))] += 1
    status = df["judge_status"]
    return {**out, "unparseable": int((status == "unparseable").sum()), "judge_error": int((status == "error").sum())}


def score_signal(scores: pd.Series | list[float]) -> str:
    """'ok'; 'no signal: 94% of rows scored 4' when the judge gives nearly one score to everything; or
    'not assessed: ...' below SIGNAL_MIN_ROWS parsed scores."""
    x = [float(v) for v in scores if v is not None and math.isfinite(float(v))]
    if len(x) < SIGNAL_MIN_ROWS:
        return f"not assessed: only {len(x)} parsed scores (needs {SIGNAL_MIN_ROWS})"
    rounded = [int(math.floor(v + 0.5)) for v in x]
    mode = max(set(rounded), key=lambda k: (rounded.count(k), k))
    share = rounded.count(mode) / len(x)
    std = statistics.pstdev(x)
    if share >= SIGNAL_MAX_SHARE:
        return f"no signal: {share:.0%} of rows scored {mode}"
    if std < SIGNAL_MIN_STD:
        return f"no signal: score std {std:.2f} over {len(x)} rows ({share:.0%} scored {mode})"
    return "ok"
