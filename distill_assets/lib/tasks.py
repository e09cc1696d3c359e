"""The task file: one entry per category (the partition keys) with its generation, filter and eval settings.

All thresholds used anywhere in the graph come from here, never from constants in code.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distill_assets.lib.errors import InputError, InputErrors
from distill_assets.lib.settings import get_settings

VerifyKind = Literal["none", "math", "code", "label", "tool_call"]
Complexity = Literal["simple", "moderate", "complex"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MethodSpec(_Strict):
    """One generation method. `count` means: seeds used (response, cot, evol_instruct, task_specific) or
    new instructions written (self_instruct); None = all seeds. `per_call`: instructions asked per writer call
    (self_instruct) or synthetic inputs per real input (task_specific)."""

    count: int | None = Field(default=None, ge=0)
    rounds: int = Field(default=2, ge=1, le=8, description="evol_instruct: evolution rounds")
    examples_per_prompt: int = Field(default=3, ge=1, le=10, description="self_instruct: seed examples shown")
    per_call: int = Field(default=4, ge=1, le=20, description="instructions asked for per teacher call")


class Methods(_Strict):
    response: MethodSpec | None = None
    cot: MethodSpec | None = None
    self_instruct: MethodSpec | None = None
    evol_instruct: MethodSpec | None = None
    task_specific: MethodSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _counts_shorthand(cls, data: Any) -> Any:
        # `response: 25` is shorthand for `response: {count: 25}`; `response: {}` or `true` means all seeds
        if isinstance(data, dict):
            out = {}
            for k, v in data.items():
                if isinstance(v, bool):
                    out[k] = {} if v else None
                elif isinstance(v, int):
                    out[k] = {"count": v}
                else:
                    out[k] = v if v is not None else {}
            return out
        return data

    def enabled(self) -> dict[str, MethodSpec]:
        return {k: getattr(self, k) for k in type(self).model_fields if getattr(self, k) is not None}


class Generation(_Strict):
    mode: Literal["online", "batch"] | None = Field(
        default=None, description="online: concurrent calls; batch: each phase is one OpenAI Batch API job "
                                  "(results within 24 h, at the batch price); unset: the teacher's TEACHER_MODE "
                                  "(online unless set)")
    logprobs: int | None = Field(
        default=None, ge=0, le=20,
        description="ask the teacher for the top-k logprobs of each answer token (teacher_logprobs, for "
                    "mode sparse_kd); 0 or null = off. OpenAI allows at most 20")


class Filters(_Strict):
    min_tokens: int = Field(default=8, ge=0, description="response length floor, student tokens")
    max_tokens: int = Field(default=2048, ge=1, description="response length ceiling, student tokens")
    near_dup_threshold: float = Field(default=0.9, gt=0, le=1)
    judge_min_score: float = Field(default=4, ge=1, le=5)
    language: str | None = Field(default="en", description="ISO 639-1 code; null disables the check")
    max_repeat_ngram_ratio: float = Field(default=0.3, ge=0, le=1, description="share of repeated word 4-grams")
    max_blank_run: int = Field(default=2, ge=0, description="max runs of 3+ newlines")
    language_min_chars: int = Field(default=40, ge=0, description="shorter prose is 'unverifiable', not dropped")
    near_dup_min_tokens: int = Field(
        default=6, ge=0,
        description="shorter responses (labels, bare numbers) are near-dup-compared on the instruction only")
    judge_keep_unparseable: bool = Field(default=False, description="keep rows whose judge answer stays unparseable")
    judge_max_tokens: int = Field(default=160, ge=8, description="judge answer budget (JSON scores + rationale)")
    judge_max_chars: int = Field(default=6000, ge=200, description="instruction/response chars shown to the judge")
    judge_enabled: bool = Field(
        default=True, description="off: rows pass the judge untouched, for answers verification checks exactly "
                                   "(labels against a gold answer, tool calls against the expected call)")
    self_consistency_min_agree: float = Field(
        default=0.5, ge=0, lt=1,
        description="rows without a reference pass when more than this share of the samples agree with them")
    keep_unverifiable: bool | None = Field(
        default=None, description="keep rows the verifier cannot check; default: no for code, yes otherwise")
    verify_isolation: Literal["bwrap", "guard"] = Field(
        default="bwrap", description="code runs under bubblewrap; 'guard' opts into a weaker in-process guard")
    generate_tests: bool = Field(
        default=True, description="code rows without tests get tests written by the teacher from the instruction")
    generated_tests: int = Field(default=3, ge=1, le=10, description="assert lines asked for per instruction")
    verify_timeout_s: float = Field(default=5.0, gt=0, description="code sandbox wall budget per row")
    verify_memory_mb: int = Field(default=512, ge=64, description="code sandbox address-space limit")
    verify_workers: int = Field(default=2, ge=1, le=64, description="code sandboxes run in parallel")
    refusal_patterns: list[str] = Field(
        default_factory=lambda: [
            # refusals, not apologies: a support reply saying "I'm sorry to hear that" is fine
            r"\bI(?:'m| am) (?:unable|not able) to (?:help|assist|answer|provide|do|comply)\b",
            r"\bI(?:'m| am) sorry,? but I (?:can(?:no|')t|won't|am unable|will not)\b",
            r"\bI can(?:no|')t (?:help|assist)(?: you)? with (?:that|this)\b",
            r"\bAs an AI(?: language model)?,? I\b",
        ]
    )


class FunctionSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
    description: str = ""
    parameters: dict = Field(default_factory=lambda: {"type": "object", "properties": {}},
                             description="JSON schema of the arguments object")

    @field_validator("parameters")
    @classmethod
    def _is_schema(cls, v):
        try:
            Draft202012Validator.check_schema(v)
        except SchemaError as e:
            raise ValueError(f"not a valid JSON schema: {e.message}") from None
        if v.get("type") != "object":
            raise ValueError("the arguments schema must have type: object")
        return v


class ToolSpec(_Strict):
    """One OpenAI-style function the teacher may call (`tools` of a category)."""

    type: Literal["function"] = "function"
    function: FunctionSpec


class StageLossBand(_Strict):
    low: float = Field(ge=0, le=1)
    high: float = Field(ge=0, le=1)


def _default_stage_bands() -> dict[str, StageLossBand]:
    # the loss each filter stage usually shows on teacher data; outside it, the yield check says which stage
    return {
        "quality_filtered": StageLossBand(low=0.10, high=0.20),
        "deduplicated": StageLossBand(low=0.20, high=0.40),
        "judged": StageLossBand(low=0.20, high=0.30),
        "verified": StageLossBand(low=0.10, high=0.30),
    }


class Balance(_Strict):
    max_per_difficulty: int | None = Field(default=None, ge=1)
    max_per_length_bucket: int | None = Field(default=None, ge=1)
    max_per_method: int | None = Field(default=None, ge=1)
    max_total: int | None = Field(default=None, ge=1)
    length_buckets: list[int] = Field(default_factory=lambda: [64, 256], description="token bucket edges")
    min_bucket_share: float = Field(default=0.1, ge=0, le=1, description="below this a bucket is under-represented")


class Contamination(_Strict):
    ngram_long: int = Field(default=13, ge=3)
    ngram_short: int = Field(default=8, ge=3)
    embed_threshold: float = Field(default=0.95, gt=0, le=1)
    # eval fields each n-gram rule compares training text against: short n-grams of answers (code idioms like
    # "return sum 1 for ch in s") recur across unrelated items, so the 8-gram rule looks at the questions only
    long_eval_fields: list[Literal["prompt", "reference_response"]] = Field(
        default_factory=lambda: ["prompt", "reference_response"])
    short_eval_fields: list[Literal["prompt", "reference_response"]] = Field(default_factory=lambda: ["prompt"])
    min_ngram_words: int = Field(default=5, ge=1, description="eval texts shorter than n words but at least this "
                                 "long are matched as one whole n-gram; shorter ones only by embedding")
    # text the category's own prompts share (a template) is no evidence that one copied another
    # (lib/shared_text.py); both rules look at the category's seed and eval files, never at training rows
    strip_shared_affixes: bool = Field(default=True, description="cut the word prefix/suffix that affix_share of "
                                       "the seed and eval prompts share before matching and embedding")
    affix_share: float = Field(default=0.8, gt=0.5, le=1)
    ignore_frequent_ngrams: bool = Field(default=True, description="n-grams in frequent_ngram_share of the seeds, "
                                         "or of the eval items, never count as overlap")
    frequent_ngram_share: float = Field(default=0.2, gt=0, le=1)
    shared_min_texts: int = Field(default=5, ge=2, description="an affix or n-gram must be shared by at least "
                                  "this many texts, whatever the share")


class Category(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    description: str
    system_prompt: str
    seeds: Path
    eval: Path
    methods: Methods = Field(default_factory=lambda: Methods(response={}))
    generation: Generation = Field(default_factory=Generation)
    samples_per_prompt: int = Field(default=2, ge=1, le=64)
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1, description="nucleus cut-off; unset: the server's")
    min_p: float | None = Field(default=None, ge=0, lt=1, description=(
        "drop tokens below this share of the top token's probability; unset: the server's (llama.cpp: 0.05). "
        "Rejection sampling sets 0 so that rarely chosen right answers can be drawn"))
    max_tokens: int = Field(default=512, ge=1, le=32768)
    verify: VerifyKind = "none"
    labels: list[str] | None = None
    constrain_labels: bool = Field(
        default=True, description="label categories: the teacher answers through a schema of the label set")
    label_order: Literal["fixed", "rotate"] = Field(
        default="fixed", description="rotate: the teacher's prompt lists the labels in an order rotated per message "
                                     "and sample, so a weak teacher's preference for the first-listed label is "
                                     "spread evenly")
    tools: list[ToolSpec] | None = Field(default=None, description="functions the teacher may call (OpenAI form)")
    conversation_turns: int = Field(
        default=1, ge=1, le=8, description="assistant turns per generated conversation: after each teacher answer "
                                           "the teacher, playing the user, writes the next user turn")
    complexity: Complexity = "moderate"
    filters: Filters = Field(default_factory=Filters)
    yield_band: tuple[float, float] = (0.25, 0.50)
    yield_floor: float = Field(default=0.05, ge=0, le=1, description="below this the yield check is an ERROR")
    stage_loss_bands: dict[str, StageLossBand] = Field(default_factory=_default_stage_bands)
    min_train_examples: int = Field(default=8, ge=0)
    validation_fraction: float = Field(default=0.1, ge=0, lt=1, description="clean_dataset validation split")
    balance: Balance = Field(default_factory=Balance)
    contamination: Contamination = Field(default_factory=Contamination)
    eval_target_transfer: float = Field(default=0.85, gt=0, le=2)
    max_seed_chars: int = Field(default=8000, ge=1, description="longer seed prompts are rejected")
    heldout_failure_fraction: float = Field(default=0.2, ge=0, lt=1)
    retrain_min_failures: int = Field(default=5, ge=1, description="new pending failures that trigger a retrain")
    retrain_max_wait_s: float = Field(default=86400.0, gt=0, description="oldest pending failure age that triggers")
    max_failure_bytes: int = Field(default=65536, ge=1, description="per-field UTF-8 size limit of a failure")
    failure_pass_score: float = Field(default=0.5, ge=0, le=1,
                                      description="task score (ROUGE-L without a gold answer) that resolves a failure")
    promotion_tolerance: float = Field(default=0.0, ge=0, le=1,
                                       description="allowed score drop vs the promoted model before it is 'worse'")

    @field_validator("yield_band")
    @classmethod
    def _band_order(cls, v):
        if not 0 <= v[0] <= v[1] <= 1:
            raise ValueError("yield_band must be [low, high] with 0 <= low <= high <= 1")
        return v

    @model_validator(mode="after")
    def _label_needs_labels(self):
        if self.verify == "label" and not self.labels:
            raise ValueError("verify: label needs a non-empty 'labels' list")
        if not self.methods.enabled():
            raise ValueError("at least one generation method must be enabled")
        if self.verify == "tool_call" and not self.tools:
            raise ValueError("verify: tool_call needs a non-empty 'tools' list")
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError(f"tool function names must be unique; got {names}")
        return self

    def tools_json(self) -> list[dict] | None:
        """The tools as sent to the teacher and stored with the dataset (plain dicts, OpenAI form)."""
        return [t.model_dump() for t in self.tools] if self.tools else None


class TaskFile(_Strict):
    version: int = 1
    name: str = "distill"
    license: str = Field(default="other", description="license of the generated dataset, for its card "
                                                      "(an SPDX id or a Hugging Face license name)")
    categories: list[Category]
    path: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _unique(self):
        names = [c.name for c in self.categories]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"category names must be unique; repeated: {dupes}")
        if not names:
            raise ValueError("the task file declares no categories")
        return self

    def category(self, name: str) -> Category:
        for c in self.categories:
            if c.name == name:
                return c
        raise KeyError(f"unknown category {name!r}; the task file declares {self.names}")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categories]


def _node_lines(node: yaml.Node, path: tuple = ()) -> dict[tuple, int]:
    """Map each YAML key path to its 1-based line so validation errors can point at the line."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            lines.update(_node_lines(v, path + (k.value,)))
            lines[path + (k.value,)] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            lines.update(_node_lines(v, path + (i,)))
    return lines


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_task_file(path: str | Path) -> TaskFile:
    """Load and validate a task file; errors name the file, line and field."""
    path = Path(path).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, None, None, "task file not found (set DISTILL_TASKS)") from None
    except UnicodeDecodeError as e:
        raise InputError(path, None, None, f"not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise InputError(path, mark.line + 1 if mark else None, None, f"invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise InputError(path, 1, None, "the task file must be a mapping with a 'categories' list")
    lines = _node_lines(node) if node is not None else {}
    defaults = raw.pop("defaults", None) or {}
    cats = raw.get("categories")
    if isinstance(cats, list):
        raw["categories"] = [_merge(defaults, c) if isinstance(c, dict) else c for c in cats]
    try:
        tf = TaskFile.model_validate(raw)
    except ValidationError as e:
        errors = []
        for err in e.errors():
            loc = tuple(err["loc"])
            line = None
            for n in range(len(loc), -1, -1):  # nearest enclosing node that exists in the YAML
                if loc[:n] in lines:
                    line = lines[loc[:n]]
                    break
            errors.append(InputError(path, line, ".".join(str(p) for p in loc), err["msg"]))
        raise InputErrors(errors) from None
    base = path.parent
    for i, c in enumerate(tf.categories):
        for attr in ("seeds", "eval"):
            p = getattr(c, attr)
            full = p if p.is_absolute() else (base / p).resolve()
            if not full.exists():
                raise InputError(path, lines.get(("categories", i, attr)), f"categories.{i}.{attr}",
                                 f"file not found: {full}")
            object.__setattr__(c, attr, full)
        if c.seeds == c.eval:
            raise InputError(path, lines.get(("categories", i, "eval")), f"categories.{i}.eval",
                             "the eval file must be separate from the seeds file")
    tf.path = path
    return tf


@lru_cache(maxsize=8)
def _cached(path: str, mtime: float) -> TaskFile:
    return parse_task_file(path)


def load_tasks(path: str | Path | None = None) -> TaskFile:
    p = Path(path) if path else get_settings().tasks_file
    return _cached(str(p.resolve()), p.stat().st_mtime if p.exists() else 0.0)
