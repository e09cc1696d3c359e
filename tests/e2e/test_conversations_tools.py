"""A multi-turn category and a tool-call category through the whole graph: seeds -> clean_dataset with the fake
OpenAI server as teacher, user simulator and judge; training on them with the tiny model; the dataset exported
with its card, loaded with `datasets`, and the card's numbers compared with the ledger's.

The task file here reuses two of the demo's partition keys (support, order_tools) with its own settings."""

import json
import re

import dagster as dg
import pandas as pd
import pytest
import yaml

from tests.fakes.openai_server import FakeOpenAIServer, default_responder

TOOLS = [
    {"type": "function", "function": {"name": "lookup_order", "description": "Look up an order.", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string", "pattern": "^A-[0-9]{4}$"}},
        "required": ["order_id"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "start_refund", "description": "Start a refund.", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string", "pattern": "^A-[0-9]{4}$"},
                                         "reason": {"type": "string", "enum": ["damaged", "changed_mind"]}},
        "required": ["order_id", "reason"], "additionalProperties": False}}},
]
CHAT_SEEDS = [
    {"prompt": "My blender makes a grinding noise when I start it. What should I check first?"},
    {"prompt": "How do I change the delivery address on an order that has not shipped yet?"},
    {"prompt": "The discount code from your newsletter is rejected at checkout. Why could that be?"},
    {"messages": [{"role": "user", "content": "Hi, I need help with my account settings."},
                  {"role": "assistant", "content": "Of course. What would you like to change in your settings?"},
                  {"role": "user", "content": "I want to turn off the marketing emails but keep order updates."}]},
]
CHAT_EVAL = [{"prompt": "Can I get an invoice with my company's tax number printed on it?",
              "reference_response": "Yes, add the tax number in your account and download the invoice again."}]


def _call(name, **args):
    return {"name": name, "arguments": args}


ORDER_SEEDS = [
    {"prompt": "Where is my order A-1001?", "expected_tool_call": _call("lookup_order", order_id="A-1001")},
    {"prompt": "Check the status of A-2044 please.", "expected_tool_call": _call("lookup_order", order_id="A-2044")},
    {"prompt": "The lamp in A-3310 arrived damaged, refund it.",
     "expected_tool_call": _call("start_refund", order_id="A-3310", reason="damaged")},
    # the fake teacher picks the first reason whose word is in the text: "damaged", not changed_mind
    {"prompt": "I want a refund for A-5523, I changed my mind and the box looks damaged.",
     "expected_tool_call": _call("start_refund", order_id="A-5523", reason="changed_mind")},
    {"messages": [{"role": "user", "content": "My parcel is late."},
                  {"role": "assistant", "content": "Sorry about that. What is the order number?"},
                  {"role": "user", "content": "It is A-7781."}],
     "expected_tool_call": _call("lookup_order", order_id="A-7781")},
]
ORDER_EVAL = [{"prompt": "Has order A-9367 shipped yet?", "expected_tool_call": _call("lookup_order", order_id="A-9367")},
              {"prompt": "Refund A-1488, it came broken and damaged.",
               "expected_tool_call": _call("start_refund", order_id="A-1488", reason="damaged")}]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path.name


def task_file(tmp_path) -> str:
    common = {"samples_per_prompt": 1, "yield_floor": 0.0, "min_train_examples": 1,
              "filters": {"min_tokens": 2, "judge_min_score": 2}, "validation_fraction": 0.3}
    cats = [
        {"name": "support", "description": "Customer-support conversations for a web store.",
         "system_prompt": "You are a helpful support agent.", "seeds": _jsonl(tmp_path / "s_support.jsonl", CHAT_SEEDS),
         "eval": _jsonl(tmp_path / "e_support.jsonl", CHAT_EVAL), "conversation_turns": 3,
         "methods": {"response": {}}, **common},
        {"name": "order_tools", "description": "Order look-ups and refunds by function calls.",
         "system_prompt": "You are the order assistant.", "seeds": _jsonl(tmp_path / "s_orders.jsonl", ORDER_SEEDS),
         "eval": _jsonl(tmp_path / "e_orders.jsonl", ORDER_EVAL), "tools": TOOLS, "verify": "tool_call",
         "max_tokens": 64, "methods": {"response": {}}, **common,
         "filters": {**common["filters"], "language": None}},
    ]
    p = tmp_path / "tasks.yaml"
    p.write_text(yaml.safe_dump({"version": 1, "name": "test-assistant", "license": "cc-by-4.0",
                                 "categories": cats}, sort_keys=False))
    return str(p)


def responder(body: dict) -> str:
    msgs = body["messages"]
    text = msgs[-1]["content"] or ""
    if msgs[0]["content"].startswith("You are a strict, impartial grader"):
        return '{"accuracy": 5, "helpfulness": 5, "coherence": 5, "overall": 5, "rationale": "fine"}'
    if "role-playing a user" in text:
        n = text.count("\nAssistant:") + text.startswith("Assistant:")
        return f"Thanks, that helps. Follow-up number {n}: what happens if that does not work either?"
    return default_responder(body)


def tool_responder(body: dict) -> list[dict]:
    user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    oid = re.search(r"A-\d{4}", user).group(0)
    if "refund" in user.lower():
        reason = next(r for r in ("damaged", "changed_mind") if r.split("_")[0] in user.lower())
        name, args = "start_refund", {"order_id": oid, "reason": reason}
    else:
        name, args = "lookup_order", {"order_id": oid}
    return [{"id": "call_1", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("convtools")
    mp = pytest.MonkeyPatch()
    home = tmp / "home"
    mp.setenv("DISTILL_HOME", str(home))
    mp.setenv("DISTILL_TASKS", task_file(tmp))
    srv = FakeOpenAIServer(responder=responder, tool_responder=tool_responder, keep_bodies=True).start()
    mp.setenv("TEACHER_BASE_URL", srv.base_url)
    mp.setenv("TEACHER_MODEL", srv.model)
    from distill_assets import definitions
    from distill_assets.defs.resources import build_resources
    from distill_assets.lib.ledger import open_store

    base = definitions.defs()
    assets, checks = list(base.assets or []), list(base.asset_checks or [])
    resources = build_resources()
    per_category = ["seed_prompts", "raw_generations", "quality_filtered", "deduplicated", "judged", "verified",
                    "balanced", "eval_set", "decontaminated", "clean_dataset"]
    results = {}
    for cat in ("support", "order_tools"):
        res = dg.materialize(assets + checks, selection=per_category, partition_key=cat, resources=resources,
                             raise_on_error=False)
        results[cat] = res
    store = open_store(str(home / "distill.duckdb"))
    yield {"store": store, "results": results, "srv": srv, "assets": assets, "checks": checks,
           "resources": resources, "home": home, "tmp": tmp}
    srv.stop()
    mp.undo()


def _failures(res):
    return [e.message for e in res.all_events if e.is_failure]


def _blocking_checks_pass(res):
    ev = {e.asset_check_key.name: e for e in res.get_asset_check_evaluations()}
    # the yield band is advice (WARN) on a handful of rows; schema, contamination and duplicates must pass
    assert {"schema", "no_eval_contamination", "no_duplicates", "yield_within_band"} <= set(ev)
    bad = {k: e.description for k, e in ev.items() if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR}
    assert not bad, bad


@pytest.mark.e2e
def test_multi_turn_category_reaches_clean_dataset(graph):
    res = graph["results"]["support"]
    assert res.success, _failures(res)
    _blocking_checks_pass(res)
    clean = graph["store"].query_df("SELECT * FROM clean_dataset WHERE category = 'support'")
    assert len(clean) >= 3
    for m in clean["messages"]:
        roles = [x["role"] for x in json.loads(m)]
        assert roles[0] == "system" and roles.count("assistant") == 3  # every conversation grew to 3 turns
        assert roles[1:] == ["user", "assistant"] * 3 or roles[1:4] == ["user", "assistant", "user"]
    # the seed conversation kept its own first turns, then the teacher continued it
    seeded = [json.loads(m) for m in clean["messages"] if "marketing emails" in m]
    assert seeded and seeded[0][2]["content"].startswith("Of course. What would you like")
    raw = graph["store"].query_df("SELECT turn_calls, call_key FROM raw_generations WHERE category = 'support'")
    calls = [json.loads(t) for t in raw["turn_calls"]]
    # each teacher call of a conversation is recorded: 3 answers and 2 simulated user turns (1 for the seeded one)
    assert sorted([c["role"] for c in cs].count("user") for cs in calls) == [1, 2, 2, 2]
    assert all(cs[-1]["call_key"] == k for cs, k in zip(calls, raw["call_key"]))
    from distill_assets.lib.lineage import origin, why

    eid = clean["example_id"].iloc[0]
    o = origin(graph["store"], eid)
    assert len(o["teacher_calls"]) == len(o["generation"]["turn_calls"])  # every turn's call is found
    assert why(graph["store"], eid)["status"] == "kept through clean_dataset"
    ev = graph["store"].query_df("SELECT evidence FROM lineage WHERE category = 'support' AND stage = "
                                 "'quality_filtered'")
    assert all(json.loads(e)["assistant_turns"] == 3 for e in ev["evidence"])  # every turn was checked
    judged = [b for b in graph["srv"].bodies if b["messages"][0]["content"].startswith("You are a strict")]
    assert any("Conversation so far:" in b["messages"][1]["content"] for b in judged)


@pytest.mark.e2e
def test_tool_category_verifies_calls(graph):
    res = graph["results"]["order_tools"]
    assert res.success, _failures(res)
    _blocking_checks_pass(res)
    sent = [b for b in graph["srv"].bodies if b.get("tools")]
    assert sent and sent[0]["tools"][0]["function"]["name"] == "lookup_order"
    store = graph["store"]
    ver = store.query_df("SELECT l.example_id, l.verdict, l.reason, l.evidence, r.instruction FROM lineage l "
                         "JOIN raw_generations r USING (example_id) WHERE l.stage = 'verified' "
                         "AND l.category = 'order_tools'")
    mismatch = ver[ver["instruction"].str.contains("changed my mind")]
    assert mismatch["reason"].tolist() == ["tool_call_mismatch"] and mismatch["verdict"].tolist() == ["dropped"]
    assert (ver.loc[~ver.index.isin(mismatch.index), "verdict"] == "kept").all()
    clean = store.query_df("SELECT * FROM clean_dataset WHERE category = 'order_tools'")
    assert len(clean) == 4
    last = [json.loads(m)[-1] for m in clean["messages"]]
    assert all(m["tool_calls"][0]["function"]["name"] in ("lookup_order", "start_refund") for m in last)
    assert json.loads(clean["tools"].iloc[0])[1]["function"]["name"] == "start_refund"


@pytest.mark.e2e
def test_training_on_conversations_and_tool_calls(graph, tmp_path_factory, monkeypatch):
    from tests.lib.training.tiny_model import session_dirs

    tiny = session_dirs(tmp_path_factory)
    monkeypatch.setenv("STUDENT_BASE", str(tiny["base"]))
    cfg = {"ops": {"lora_adapter": {"config": {
        "num_train_epochs": 1, "effective_batch_size": 2, "per_device_batch_size": 2, "learning_rate": 5e-3,
        "max_seq_len": 384, "lora_r": 4, "lora_alpha": 8, "num_threads": 2}}}}
    res = dg.materialize(graph["assets"], selection=["student_base_model", "lora_adapter"],
                         resources=graph["resources"], run_config=cfg, raise_on_error=False)
    assert res.success, _failures(res)
    md = {m.materialization.asset_key.path[-1]: m.materialization.metadata
          for m in res.get_asset_materialization_events()}["lora_adapter"]
    assert md["tool_format"].value == "plain_text"  # SmolLM2's template has no tool support: said so
    assert any("no tool support" in n for n in md["notes"].value)
    n_clean = len(graph["store"].query_df("SELECT example_id FROM clean_dataset"))
    assert md["train_examples"].value + md["validation_examples"].value == n_clean


@pytest.mark.e2e
def test_export_loads_and_the_card_matches_the_ledger(graph):
    import datasets

    res = dg.materialize(graph["assets"], selection=["dataset_export"], resources=graph["resources"])
    assert res.success
    out = graph["home"] / "exports" / "dataset"
    store = graph["store"]
    clean = store.query_df("SELECT category, split, count(*) AS n FROM clean_dataset GROUP BY ALL")
    every = datasets.load_dataset(str(out))  # the default config: every category
    assert sum(len(every[s]) for s in every) == int(clean["n"].sum())
    tools = datasets.load_dataset(str(out), "order_tools", split="train")
    call = next(m for m in tools[0]["messages"] if m["tool_calls"])["tool_calls"][0]
    assert call["function"]["name"] in ("lookup_order", "start_refund") and json.loads(call["function"]["arguments"])
    jsonl = datasets.load_dataset("json", data_files=str(out / "jsonl" / "support" / "train.jsonl"), split="train")
    assert len(jsonl) == int(clean.query("category == 'support' and split == 'train'")["n"].sum())

    card = (out / "README.md").read_text()
    head = yaml.safe_load(card.split("---")[1])
    assert head["license"] == "cc-by-4.0"
    sizes = {(c["config_name"], s["name"]): s["num_examples"] for c in head["dataset_info"] for s in c["splits"]}
    assert sizes == {(r.category, r.split): int(r.n) for r in clean.itertuples()}
    facts = json.loads((out / "card.json").read_text())
    ledger = store.query_df("SELECT category, stage, rows_in, kept, dropped, quarantined FROM lineage_funnel")
    for cat in ("support", "order_tools"):
        want = ledger[ledger["category"] == cat].set_index("stage")
        got = pd.DataFrame(facts["categories"][cat]["funnel"]).set_index("stage")
        assert set(got.index) == set(want.index)
        for col in ("rows_in", "kept", "dropped", "quarantined"):
            assert got[col].to_dict() == {k: int(v) for k, v in want[col].items()}, (cat, col)
        for stage, r in want.iterrows():  # and the card's table prints those numbers
            assert f"| {stage} | {r.rows_in} | {r.kept} | {r.dropped} | {r.quarantined} |" in card
    assert facts["categories"]["order_tools"]["drop_reasons"]["verified"] == {"tool_call_mismatch": 1}
    assert facts["categories"]["order_tools"]["teacher_models"] == {"fake-teacher": 4}
    assert facts["empty_categories"] == [] and facts["distill_version"] in card
