"""Run-scoped artifacts: two runs that interleave (A trains, B trains, B merges and exports, then A merges and
exports) each export their own adapter. With "the newest artifacts row", A's merge would pick B's adapter.

Real tiny-model LoRA training, merge and GGUF export, in two threads on one Dagster instance; a success hook on
A's lora_adapter step holds run A until run B has exported."""

import json
import threading

import dagster as dg
import pandas as pd
import pytest

from distill_assets.defs import gguf, lora, merge, student
from distill_assets.defs.partitions import CATEGORY
from distill_assets.lib.artifacts import artifact_chain
from tests.lib.training.tiny_model import clean_frame, session_dirs

TRAIN = {"num_train_epochs": 1, "effective_batch_size": 4, "per_device_batch_size": 4, "max_seq_len": 96,
         "lora_r": 4, "lora_alpha": 8, "num_threads": 1}
GRAPH = [*student.assets, *lora.assets, *merge.assets, *gguf.assets]
WAIT_S = 900


@pytest.mark.e2e
def test_interleaved_runs_each_export_their_own_adapter(tmp_path_factory, distill_home, duck_resources, store,
                                                        monkeypatch):
    monkeypatch.setenv("STUDENT_BASE", str(session_dirs(tmp_path_factory)["base"]))
    monkeypatch.setenv("DISTILL_GGUF_PARITY_THRESHOLDS", json.dumps({"q8_0": {"min_top1": 0.8},
                                                                     "q4_k_m": {"min_top1": 0.5}}))
    keys = CATEGORY.get_partition_keys()
    frame = clean_frame(2, categories=tuple(keys))

    @dg.asset(name="clean_dataset", partitions_def=CATEGORY, metadata={"partition_expr": "category"})
    def clean_dataset(context) -> pd.DataFrame:
        return frame[frame["category"] == context.partition_key].reset_index(drop=True)

    a_trained, b_exported = threading.Event(), threading.Event()
    held = []

    @dg.success_hook
    def hold_first_adapter(context: dg.HookContext):
        if context.op.name == "lora_adapter" and not held:
            held.append(context.run_id)
            a_trained.set()
            assert b_exported.wait(WAIT_S), "run B never exported"

    job = dg.define_asset_job("train_export", selection=[a.key for a in GRAPH], hooks={hold_first_adapter})
    defs = dg.Definitions(assets=[clean_dataset, *GRAPH], asset_checks=[*merge.asset_checks, *gguf.asset_checks],
                          jobs=[job], resources=duck_resources)
    with dg.instance_for_test() as instance:
        for k in keys:
            assert dg.materialize([clean_dataset], partition_key=k, resources=duck_resources,
                                  instance=instance).success
        results, errors = {}, []

        def run(name: str, lr: float, after: threading.Event | None):
            try:
                if after is not None:
                    assert after.wait(WAIT_S), f"run {name} waited too long"
                cfg = {"ops": {"lora_adapter": {"config": {**TRAIN, "learning_rate": lr}}}}
                results[name] = defs.resolve_job_def("train_export").execute_in_process(
                    run_config=cfg, instance=instance, tags={"which": name})
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(f"{name}: {type(e).__name__}: {e}")
                a_trained.set()
            finally:
                if name == "B":
                    b_exported.set()

        threads = [threading.Thread(target=run, args=("A", 5e-3, None)),
                   threading.Thread(target=run, args=("B", 3e-2, a_trained))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(2 * WAIT_S)
        assert not errors, errors
        assert held == [results["A"].run_id]

    def mat(name: str, asset: str) -> dict:
        return {k: getattr(v, "value", v) for k, v in
                results[name].asset_materializations_for_node(asset)[0].metadata.items()}

    adapters = {n: mat(n, "lora_adapter")["artifact_id"] for n in ("A", "B")}
    assert adapters["A"] != adapters["B"]
    created = {}
    for n in ("A", "B"):
        res = results[n]
        assert res.success
        gguf_ids = mat(n, "gguf_export")["artifact_ids"]
        for gid in gguf_ids.values():
            chain = artifact_chain(store, gid)
            assert [r["asset"] for r in chain[:3]] == ["gguf_export", "merged_model", "lora_adapter"]
            assert chain[2]["artifact_id"] == adapters[n], f"run {n}'s export descends from {chain[2]['artifact_id']}"
            assert {r["run_id"] for r in chain[:3]} == {res.run_id}
        created[n] = min(r["created_at"] for r in (artifact_chain(store, g)[0] for g in gguf_ids.values()))
        # the blocking checks checked this run's files, not the other run's
        checks = {e.asset_check_key.name: e for e in res.get_asset_check_evaluations()}
        merged_id = mat(n, "merged_model")["artifact_id"]
        assert checks["merged_parity"].passed and checks["merged_parity"].metadata["merged"].value == merged_id
        assert checks["gguf_parity"].metadata["merged"].value == merged_id
    assert created["B"] < created["A"]  # exported in the other order than trained
