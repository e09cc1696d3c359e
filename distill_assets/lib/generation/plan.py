"""The phased generation plan of one category and its runner.

Multi-step methods run in phases: every request of a phase goes out in one concurrent batch, so the
endpoint's concurrency is used fully, and each phase's answers spawn the next phase's requests.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pandas as pd

from distill_assets.lib import conversation as conv
from distill_assets.lib.generation.prompts import (
    EVOL_OPERATIONS,
    answer_messages,
    answer_text,
    evol_messages,
    evol_operation,
    label_schema,
    parse_evolved,
    parse_instruction_list,
    parse_user_turn,
    self_instruct_messages,
    task_specific_messages,
    training_messages,
    user_turn_messages,
)
from distill_assets.lib.ids import content_hash, seed_id
from distill_assets.lib.tasks import Category
from resources.clock import utcnow
from resources.llm import ChatRequest, ChatResult, LLMSession
from resources.store import DuckDBStore

GENERATION_COLUMNS = [
    "generation_id", "example_id", "seed_id", "parent_ids", "category", "method", "messages", "system_prompt",
    "instruction", "response", "teacher_model", "params", "call_key", "sample_index", "prompt_tokens",
    "completion_tokens", "latency_s", "finish_reason", "difficulty", "reference", "tests", "entry_point",
    "source", "evol_chain", "sample_answers", "created_at", "turn_calls",
]


# ------------------------------------------------------------------------------------------------------------
@dataclass
class Step:
    kind: str  # answer | write_instructions | evolve | synthesize | user_turn
    method: str
    seed: dict  # seed row (seed_id, difficulty, reference, tests, entry_point, prompt, source)
    request: ChatRequest
    instruction: str = ""
    parent_ids: list[str] = field(default_factory=list)
    evol_chain: list[dict] = field(default_factory=list)
    round: int = 0
    n: int = 0
    turns: list[dict] = field(default_factory=list)  # the conversation so far, without the system prompt
    turn_calls: list[dict] = field(default_factory=list)  # the teacher calls that made it: turn, role, tokens
    partial: dict | None = None  # the row of the conversation as it stood, kept if this step gets no answer


def _take(seeds: list[dict], count: int | None) -> list[dict]:
    return seeds if count is None else seeds[:count]


def _answer_request(category: Category, turns: list[dict], method: str, sample_index: int) -> ChatRequest:
    # only answers are trained on, so only they carry logprobs
    return ChatRequest(answer_messages(category, turns, method, sample_index), category.temperature,
                       category.max_tokens, sample_index=sample_index, top_p=category.top_p, min_p=category.min_p,
                       tools=category.tools_json(), json_schema=label_schema(category),
                       schema_name="label", top_logprobs=category.generation.logprobs or None)


def _answer_steps(category: Category, method: str, seed: dict, instruction: str, parent_ids: list[str],
                  evol_chain: list[dict] | None = None) -> list[Step]:
    msgs = conv.loads(seed.get("messages")) if seed.get("prompt") == instruction else None
    turns = msgs or [{"role": "user", "content": instruction}]
    return [Step("answer", method, seed, _answer_request(category, turns, method, k),
                 instruction=instruction, parent_ids=parent_ids, evol_chain=evol_chain or [], turns=turns)
            for k in range(category.samples_per_prompt)]


def _derived_seed(category: Category, parent: dict, instruction: str, difficulty: str | None = None) -> dict:
    """A synthetic instruction becomes its own seed; references and tests do not carry over."""
    return {"seed_id": seed_id(category.name, instruction, "synthetic"), "prompt": instruction,
            "difficulty": difficulty or parent.get("difficulty") or "medium", "reference": None, "tests": "[]",
            "entry_point": None, "source": "synthetic" if parent.get("source") != "production" else "production"}


def _self_instruct_step(category: Category, examples: list[dict], n: int, call: int) -> Step:
    req = ChatRequest(self_instruct_messages(category, [e["prompt"] for e in examples], n),
                      max(category.temperature, 0.7), 64 * n + 64, sample_index=call)
    return Step("write_instructions", "self_instruct", examples[0], req,
                parent_ids=[e["seed_id"] for e in examples], n=n)


def _evolve_step(category: Category, s: dict, rounds: int) -> Step:
    op = evol_operation(s["seed_id"], 1)
    return Step("evolve", "evol_instruct", s, ChatRequest(evol_messages(s["prompt"], op), category.temperature, 256),
                instruction=s["prompt"], parent_ids=[s["seed_id"]],
                evol_chain=[{"seed_id": s["seed_id"], "operation": None}], round=1, n=rounds)


def production_steps(category: Category, rows: list[dict]) -> list[Step]:
    """Reported production failures are the point of a targeted run, so every one is answered by the teacher
    and gets variants near it (Evol-Instruct, else Self-Instruct from it), whatever the method counts."""
    methods = category.methods.enabled()
    answer = next((m for m in ("response", "cot") if m in methods),
                  "cot" if category.complexity == "complex" else "response")
    steps: list[Step] = []
    for s in rows:
        steps += _answer_steps(category, answer, s, s["prompt"], [s["seed_id"]])
        if "self_instruct" in methods and "evol_instruct" not in methods:
            steps.append(_self_instruct_step(category, [s], methods["self_instruct"].per_call, 0))
        else:
            steps.append(_evolve_step(category, s, methods["evol_instruct"].rounds if "evol_instruct" in methods else 1))
    return steps


def initial_steps(category: Category, seeds: pd.DataFrame) -> list[Step]:
    """The first wave of calls. The task's method counts budget the seed file's prompts; production failures
    (source=production) are planned on top by `production_steps`."""
    every = seeds.to_dict("records")
    rows = [r for r in every if r.get("source") != "production"]
    steps = production_steps(category, [r for r in every if r.get("source") == "production"])
    if not rows:
        return steps
    methods = category.methods.enabled()
    answered = set()
    for method in ("response", "cot"):
        if method in methods:
            for s in _take(rows, methods[method].count):
                steps += _answer_steps(category, method, s, s["prompt"], [s["seed_id"]])
                answered.add(s["seed_id"])
    if "self_instruct" in methods:
        spec = methods["self_instruct"]
        total = spec.count if spec.count is not None else len(rows)
        k = min(spec.examples_per_prompt, len(rows))
        for call in range(-(-total // spec.per_call) if total else 0):
            n = min(spec.per_call, total - call * spec.per_call)
            steps.append(_self_instruct_step(category, [rows[(call * k + j) % len(rows)] for j in range(k)], n, call))
    if "evol_instruct" in methods:
        spec = methods["evol_instruct"]
        for s in _take(rows, spec.count):
            steps.append(_evolve_step(category, s, spec.rounds))
    if "task_specific" in methods:
        spec = methods["task_specific"]
        for s in _take(rows, spec.count):
            if s["seed_id"] not in answered:  # the real input itself (already answered by `response` if enabled)
                steps += _answer_steps(category, "task_specific", s, s["prompt"], [s["seed_id"]])
            req = ChatRequest(task_specific_messages(category, s["prompt"], spec.per_call),
                              max(category.temperature, 0.7), 96 * spec.per_call + 64)
            steps.append(Step("synthesize", "task_specific", s, req, parent_ids=[s["seed_id"]], n=spec.per_call))
    return steps


def next_steps(category: Category, step: Step, result: ChatResult) -> list[Step]:
    """Follow-up steps spawned by a writer step's answer."""
    if step.kind == "write_instructions":
        out = []
        for instr in parse_instruction_list(result.content, step.n):
            seed = _derived_seed(category, step.seed, instr)
            out += _answer_steps(category, "self_instruct", seed, instr, step.parent_ids)
        return out
    if step.kind == "synthesize":
        out = []
        for instr in parse_instruction_list(result.content, step.n, exclude=[step.seed["prompt"]]):
            seed = _derived_seed(category, step.seed, instr)
            out += _answer_steps(category, "task_specific", seed, instr, [step.seed["seed_id"]])
        return out
    if step.kind == "evolve":
        evolved = parse_evolved(result.content)
        if not evolved:
            return []
        op = step.evol_chain[-1]["operation"] if step.evol_chain[-1]["operation"] else evol_operation(
            step.seed["seed_id"], step.round)
        difficulty = "hard" if step.round >= 2 or EVOL_OPERATIONS[op][0] == "more difficult" else None
        seed = _derived_seed(category, step.seed, evolved, difficulty)
        chain = step.evol_chain[:-1] + [{**step.evol_chain[-1], "operation": op},
                                        {"seed_id": seed["seed_id"], "operation": None, "round": step.round}]
        out = _answer_steps(category, "evol_instruct", seed, evolved, step.parent_ids + [seed["seed_id"]], chain)
        if step.round < step.n:
            nop = evol_operation(seed["seed_id"], step.round + 1)
            out.append(Step("evolve", "evol_instruct", seed,
                            ChatRequest(evol_messages(evolved, nop), category.temperature, 256),
                            instruction=evolved, parent_ids=step.parent_ids + [seed["seed_id"]],
                            evol_chain=chain[:-1] + [{**chain[-1], "operation": nop}], round=step.round + 1,
                            n=step.n))
        return out
    return []


def assistant_message(result: ChatResult, schema: dict | None = None) -> dict:
    """The teacher's answer as an assistant turn: text (the label itself for an answer through the label schema),
    and its tool calls in OpenAI form when it made some."""
    msg = {"role": "assistant", "content": answer_text(result.content or "", schema)}
    if result.tool_calls:
        msg["tool_calls"] = result.tool_calls
    return msg


def _usage(result: ChatResult, turn: int, role: str) -> dict:
    return {"turn": turn, "role": role, "call_key": result.call_key, "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens, "latency_s": round(result.latency_s, 4)}


def answered(category: Category, step: Step, result: ChatResult) -> tuple[dict | None, Step | None]:
    """An answer step's outcome: (the finished row, None), or (None, the user-simulator step that continues the
    conversation) while it has fewer than `conversation_turns` assistant turns and the answer called no tool."""
    turns = [*step.turns, assistant_message(result, step.request.json_schema)]
    n_assistant = sum(m["role"] == "assistant" for m in turns)
    calls = [*step.turn_calls, _usage(result, len(turns) - 1, "assistant")]
    row = generation_row(category, step, result, turns, calls)
    if n_assistant >= category.conversation_turns or result.tool_calls:
        return row, None
    req = ChatRequest(user_turn_messages(category, turns), max(category.temperature, 0.7),
                      min(category.max_tokens, 128), sample_index=step.request.sample_index)
    return None, Step("user_turn", step.method, step.seed, req, instruction=step.instruction,
                      parent_ids=step.parent_ids, evol_chain=step.evol_chain, turns=turns, turn_calls=calls,
                      partial=row)


def continue_conversation(category: Category, step: Step, result: ChatResult) -> tuple[dict | None, Step | None]:
    """A user-simulator answer: the next answer step, or the conversation as it stands when no usable turn came."""
    text = parse_user_turn(result.content)
    if text is None:
        return step.partial, None
    turns = [*step.turns, {"role": "user", "content": text}]
    calls = [*step.turn_calls, _usage(result, len(turns) - 1, "user")]
    req = _answer_request(category, turns, step.method, step.request.sample_index)
    return None, Step("answer", step.method, step.seed, req, instruction=text, parent_ids=step.parent_ids,
                      evol_chain=step.evol_chain, turns=turns, turn_calls=calls, partial=step.partial)


def generation_row(category: Category, step: Step, result: ChatResult, turns: list[dict] | None = None,
                   calls: list[dict] | None = None) -> dict:
    """One raw row: `messages` holds every turn; instruction/response are the last user and assistant turns
    (tool calls as their text lines); tokens and latency are summed over the conversation's teacher calls."""
    turns = turns if turns is not None else [*step.turns, assistant_message(result, step.request.json_schema)]
    calls = calls if calls is not None else [_usage(result, len(turns) - 1, "assistant")]
    return {
        "generation_id": "g_" + content_hash(result.call_key, step.method, step.seed["seed_id"]),
        "seed_id": step.seed["seed_id"],
        "parent_ids": json.dumps(step.parent_ids),
        "category": category.name,
        "method": step.method,
        "messages": conv.dumps(training_messages(category, turns)),
        "system_prompt": category.system_prompt,
        "instruction": conv.last_user(turns),
        "response": conv.message_text(turns[-1]),
        "teacher_model": result.model,
        "params": json.dumps(step.request.params()),
        "call_key": result.call_key,
        "sample_index": step.request.sample_index,
        "prompt_tokens": sum(int(c["prompt_tokens"] or 0) for c in calls),
        "completion_tokens": sum(int(c["completion_tokens"] or 0) for c in calls),
        "latency_s": sum(float(c["latency_s"] or 0) for c in calls),
        "finish_reason": result.finish_reason,
        "difficulty": step.seed.get("difficulty") or "medium",
        "reference": step.seed.get("reference"),
        "tests": step.seed.get("tests") or "[]",
        "entry_point": step.seed.get("entry_point"),
        "source": step.seed.get("source") or "seed",
        "evol_chain": json.dumps(step.evol_chain),
        "turn_calls": json.dumps(calls),
    }


@dataclass
class GenerationStats:
    calls: int = 0
    cached: int = 0
    failed: int = 0
    failures: dict = field(default_factory=dict)
    phases: int = 0
    budget_note: str | None = None
    seconds: float = 0.0


def generate(category: Category, seeds: pd.DataFrame, session: LLMSession) -> tuple[pd.DataFrame, GenerationStats]:
    """Run every method's phases for one category; returns one row per successful answer."""
    stats = GenerationStats()
    t0 = time.monotonic()
    steps = initial_steps(category, seeds)
    rows: list[dict] = []
    while steps:
        stats.phases += 1
        results = session.complete([s.request for s in steps], category=category.name,
                                   label=f"raw_generations[{category.name}] phase {stats.phases}",
                                   mode=category.generation.mode)  # None: the teacher's own mode
        following: list[Step] = []
        for step, res in zip(steps, results):
            stats.calls += 1
            stats.cached += int(res.cached)
            if not res.ok:
                stats.failed += 1
                stats.failures[res.status] = stats.failures.get(res.status, 0) + 1
                if step.partial is not None:  # a later turn failed: the conversation so far still counts
                    rows.append(step.partial)
                continue
            if step.kind in ("answer", "user_turn"):
                row, nxt = (answered if step.kind == "answer" else continue_conversation)(category, step, res)
                rows += [row] if row is not None else []
                following += [nxt] if nxt is not None else []
            else:
                following += next_steps(category, step, res)
        steps = following
        if session.budget_hit:
            stats.budget_note = session.budget_hit
            rows += [s.partial for s in steps if s.partial is not None]  # conversations cut short still count
            break
    stats.seconds = time.monotonic() - t0
    df = pd.DataFrame(rows, columns=[c for c in GENERATION_COLUMNS
                                     if c not in ("example_id", "sample_answers", "created_at")])
    df = df.drop_duplicates("generation_id").reset_index(drop=True)
    df["sample_answers"] = sample_answers(df)
    df.insert(1, "example_id", df["generation_id"])
    df["created_at"] = utcnow()
    return df, stats


def sample_answers(df: pd.DataFrame) -> list[str]:
    """Every row's sibling samples (same seed, instruction and method) as a JSON list of their responses, in
    sample order: the votes of self-consistency, kept before dedup merges identical answers."""
    if df.empty:
        return []
    keys = list(zip(df["seed_id"], df["instruction"], df["method"]))
    groups: dict[tuple, list[tuple[int, str]]] = {}
    for key, idx, resp in zip(keys, df["sample_index"], df["response"]):
        groups.setdefault(key, []).append((int(idx), resp))
    votes = {k: json.dumps([r for _, r in sorted(v, key=lambda t: t[0])], ensure_ascii=False)
             for k, v in groups.items()}
    return [votes[k] for k in keys]


def all_call_keys(df: pd.DataFrame) -> list[str]:
    """Every teacher call behind the rows: each row's final call and its earlier turns' calls."""
    keys = df["call_key"].dropna().astype(str).tolist() if "call_key" in df.columns else []
    for v in df["turn_calls"] if "turn_calls" in df.columns else []:
        keys += [c["call_key"] for c in json.loads(v or "[]") if c.get("call_key")]
    return list(dict.fromkeys(keys))


def category_cost(store: DuckDBStore, call_keys: list[str]) -> dict[str, float]:
    if not call_keys:
        return {"cost_usd": 0.0, "prompt_tokens": 0, "completion_tokens": 0}
    with store.connect() as conn:
        conn.register("_k", pd.DataFrame({"call_key": call_keys}))
        try:
            r = conn.execute("""SELECT coalesce(sum(cost_usd), 0), coalesce(sum(prompt_tokens), 0),
                                       coalesce(sum(completion_tokens), 0)
                                FROM teacher_calls JOIN _k USING (call_key)""").fetchall()[0]
        finally:
            conn.unregister("_k")
    return {"cost_usd": float(r[0]), "prompt_tokens": int(r[1]), "completion_tokens": int(r[2])}
