"""Variant discovery, efficiency numbers, the teacher's ledger price, and llama.cpp generation in a worker."""

import pandas as pd
import pytest

from distill_assets.lib import ledger
from distill_assets.lib.evaluation import generate as gen
from distill_assets.lib.evaluation import variants as vr
from distill_assets.lib.ledger import open_store
from resources.clock import utcnow


def test_discover_variants_from_the_upstream_artifacts(tmp_path):
    def row(aid, asset, kind, parent, metadata=None):
        return {"artifact_id": aid, "asset": asset, "kind": kind, "path": str(tmp_path / aid), "sha256": "x",
                "bytes": 1, "parent_artifact_id": parent, "metadata": metadata or {}}

    found = {"student_base_model": row("b1", "student_base_model", "hf_model", None),
             "merged_model": row("m1", "merged_model", "hf_model", "adapter-7", {"adapter_version": "a7"}),
             "gguf_export": {"q4_k_m": row("g1", "gguf_export", "gguf_q4_k_m", "m1"),
                             "q8_0": row("g2", "gguf_export", "gguf_q8_0", "m0")},
             "awq_export": "skipped: needs llm-compressor"}
    specs = {s.name: s for s in vr.discover_variants(found)}
    assert list(specs) == ["teacher", "base_student", "merged_student", "gguf_q8_0", "gguf_q4_k_m", "awq"]
    assert specs["awq"].skipped == "skipped: needs llm-compressor" and specs["gguf_q4_k_m"].kind == "gguf"
    assert specs["gguf_q4_k_m"].skipped is None and specs["gguf_q4_k_m"].path == str(tmp_path / "g1")
    assert specs["gguf_q8_0"].skipped.startswith("skipped: stale export")  # made from an older merged model
    assert vr.adapter_version_of(specs["merged_student"]) == "a7"
    none = {s.name: s.skipped for s in vr.discover_variants({"gguf_export": "skipped: gguf_export has never been "
                                                                            "materialized"})}
    assert none["merged_student"] == "skipped: no merged_model artifact registered"
    assert none["gguf_f16"].endswith("never been materialized")  # a missing export is a row with its reason


def test_students_move_to_llama_cpp_only_with_a_matching_f16_file(tmp_path):
    def row(aid, asset, kind, parent):
        return {"artifact_id": aid, "asset": asset, "kind": kind, "path": str(tmp_path / aid), "sha256": "x",
                "bytes": 1, "parent_artifact_id": parent, "metadata": {}}

    found = {"student_base_model": row("b1", "student_base_model", "hf_model", None),
             "merged_model": row("m1", "merged_model", "hf_model", "adapter-7"),
             "gguf_export": {"f16": row("g0", "gguf_export", "gguf_f16", "m1"),
                             "q8_0": row("g2", "gguf_export", "gguf_q8_0", "m1")}}
    asked, logs = [], []

    def base_gguf(spec):
        asked.append(spec.path)
        return tmp_path / "b1-f16.gguf"

    specs = vr.discover_variants(found, gguf_kinds=("gguf_q8_0",))
    moved = {s.name: s for s in vr.students_on_llama_cpp(specs, found, base_gguf, log=logs.append)}
    assert moved["merged_student"].kind == "gguf" and moved["merged_student"].path == str(tmp_path / "g0")
    assert moved["merged_student"].artifact_id == "m1"  # still the merged model: its adapter version is kept
    assert moved["base_student"].kind == "gguf" and moved["base_student"].path == str(tmp_path / "b1-f16.gguf")
    assert asked == [str(tmp_path / "b1")] and moved["gguf_q8_0"].path == str(tmp_path / "g2") and not logs

    # an f16 file of another merged model, or a base that cannot be converted: transformers, and the log says so
    stale = {**found, "gguf_export": {"f16": row("g0", "gguf_export", "gguf_f16", "m0")}}

    def broken(spec):
        raise RuntimeError("convert_hf_to_gguf failed")

    kept = {s.name: s for s in vr.students_on_llama_cpp(vr.discover_variants(stale), stale, broken, log=logs.append)}
    assert kept["merged_student"].kind == "hf" and kept["base_student"].kind == "hf"
    assert any("no f16 GGUF export" in m for m in logs) and any("convert_hf_to_gguf failed" in m for m in logs)


def test_merged_of_adapter_names_the_adapter(tmp_path):
    store = open_store(str(tmp_path / "d.duckdb"))
    for aid, parent in (("merged_model:a", "lora_adapter:A"), ("merged_model:b", "lora_adapter:B")):
        ledger.register_artifact(store, artifact_id=aid, asset="merged_model", kind="hf_model", path=f"/p/{aid}",
                                 sha256="s", bytes=1, parent_artifact_id=parent, dataset_version="d", run_id="r",
                                 metadata={})
    assert vr.merged_of_adapter(store, "lora_adapter:A").artifact_id == "merged_model:a"  # not the newest
    assert vr.merged_of_adapter(store, "lora_adapter:C") is None


def test_efficiency_row_and_cost_estimate():
    gens = pd.DataFrame({"example_id": ["a", "b", "c", "d"], "variant": "m", "category": "x",
                         "response": ["r"] * 4, "latency_s": [1.0, 2.0, 3.0, 4.0], "prompt_tokens": 5,
                         "completion_tokens": [10, 20, 30, 40], "finish_reason": "stop", "error": None})
    row = vr.efficiency_row("merged_student", gens, {"peak_mem_mb": 12.0}, size_bytes=1000, usd_per_hour=3.6,
                            teacher_usd_per_1m=2.0)
    assert row["tokens_per_s"] == pytest.approx(10.0)
    assert row["latency_p50_s"] == pytest.approx(2.5) and row["latency_p95_s"] == pytest.approx(3.85)
    # $3.6/h at 10 tok/s = 36,000 tokens per $3.6 -> $100 per 1M tokens
    assert row["usd_per_1m_tokens"] == pytest.approx(100.0) and row["cost_vs_teacher"] == pytest.approx(50.0)
    skipped = vr.skipped_row("awq", "skipped: needs CUDA")
    assert skipped["status"] == "skipped"


def test_teacher_price_comes_from_the_ledger(tmp_path):
    store = open_store(str(tmp_path / "d.duckdb"))
    assert vr.teacher_ledger_price(store, 0.0, 3.0)["usd_per_1m_tokens"] == 3.0  # nothing in the ledger yet
    store.insert_df("teacher_calls", pd.DataFrame([
        {"call_key": "k1", "model": "t", "role": "teacher", "status": "ok", "prompt_tokens": 600_000,
         "completion_tokens": 400_000, "cost_usd": 1.5, "latency_s": 1.0, "created_at": utcnow()},
        {"call_key": "k2", "model": "t", "role": "judge", "status": "ok", "prompt_tokens": 10,
         "completion_tokens": 10, "cost_usd": 99.0, "latency_s": 1.0, "created_at": utcnow()},
    ]))
    price = vr.teacher_ledger_price(store, 0.0, 3.0)
    assert price["usd_per_1m_tokens"] == pytest.approx(1.5) and price["source"].startswith("ledger")


@pytest.mark.real_model
def test_gguf_generation_in_a_worker_process():
    from distill_assets.lib.settings import embedded_teacher_gguf

    items = [{"example_id": "e1", "category": "c", "messages": [{"role": "user", "content": "Say hi."}]},
             {"example_id": "e2", "category": "c", "messages": [{"role": "user", "content": "2+2?"}]}]
    gens, info = gen.generate_gguf(str(embedded_teacher_gguf()), items, "gguf_q4_1", max_new_tokens=6, n_ctx=512,
                                  threads=1, timeout_s=240)
    assert gens["error"].isna().all(), gens["error"].tolist()
    assert (gens["completion_tokens"] > 0).all() and (gens["completion_tokens"] <= 6).all()
    assert info["peak_mem_mb"] > 10 and info["backend"] == "llama.cpp"
    again, _ = gen.generate_gguf(str(embedded_teacher_gguf()), items[:1], "gguf_q4_1", max_new_tokens=6, n_ctx=512,
                                threads=1, timeout_s=240)
    assert again.iloc[0]["response"] == gens.iloc[0]["response"]  # greedy: deterministic


def test_batched_hf_generation_matches_one_at_a_time(tmp_path_factory):
    from tests.lib.training.tiny_model import session_dirs

    base = str(session_dirs(tmp_path_factory)["base"])
    items = [{"example_id": f"e{i}", "category": "c", "messages": [{"role": "user", "content": q}]}
             for i, q in enumerate(["Say hi.", "What is the capital of France? Answer in one word.", "2+2?"])]
    one, _ = gen.generate_hf(base, items, "base_student", max_new_tokens=8, threads=1, batch_size=1)
    batched, info = gen.generate_hf(base, items, "base_student", max_new_tokens=8, threads=1, batch_size=3)
    assert batched["error"].isna().all() and info["backend"] == "transformers (cpu, batch 3)"
    cols = ["example_id", "response", "prompt_tokens", "completion_tokens", "finish_reason"]
    # left padding changes nothing for greedy decoding: same tokens, same prompt lengths (padding not counted)
    assert batched[cols].to_dict("records") == one[cols].to_dict("records")
    assert batched["latency_s"].nunique() == 1  # every answer of a batch waits for the whole batch
    assert (batched["completion_tokens"] <= 8).all()


def test_awq_variant_is_discovered_and_answers_through_transformers_on_cpu(tmp_path_factory):
    import torch

    pytest.importorskip("llmcompressor", reason="the awq extra is not installed")
    from tests.lib.training.tiny_model import tiny_awq

    path = str(tiny_awq(tmp_path_factory))

    def row(aid, asset, parent):
        return {"artifact_id": aid, "asset": asset, "kind": "awq_w4a16" if asset == "awq_export" else "hf_model",
                "path": path, "sha256": "x", "bytes": 1, "parent_artifact_id": parent, "metadata": {}}

    found = {"merged_model": row("m1", "merged_model", "a1"), "awq_export": row("w1", "awq_export", "m1")}
    (spec,) = [s for s in vr.discover_variants(found) if s.name == "awq"]
    assert (spec.kind, spec.path, spec.skipped) == ("awq", path, None)
    stale = {**found, "awq_export": row("w0", "awq_export", "m0")}
    assert next(s for s in vr.discover_variants(stale) if s.name == "awq").skipped.startswith("skipped: stale")

    assert vr.awq_unavailable() is None  # compressed-tensors loads it in transformers
    if not torch.cuda.is_available():
        assert vr.awq_vllm_unavailable() == "skipped: needs CUDA"
    items = [{"example_id": "e1", "category": "c", "messages": [{"role": "user", "content": "Say hi."}]}]
    logs = []
    gens, eff = vr.run_variants([spec], items, max_new_tokens=4, teacher_complete=None, teacher_price={},
                                usd_per_hour=0.1, threads=1, log=logs.append)
    assert eff.iloc[0]["status"] == "ok" and gens["error"].isna().all() and (gens["completion_tokens"] > 0).all()
    if not torch.cuda.is_available():
        assert "compressed-tensors decompressed" in eff.iloc[0]["backend"]
        assert any("vLLM skipped: needs CUDA" in m for m in logs)
