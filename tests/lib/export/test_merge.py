from distill_assets.lib.export.merge import merge_adapter, merge_parity
from distill_assets.lib.export.parity import MERGE_MAX_ABS_DIFF


def test_merge_parity_holds(tiny, tiny_adapter, tmp_path):
    out = tmp_path / "merged"
    info = merge_adapter(tiny["base"], tiny_adapter, out)
    assert (out / "model.safetensors").exists() and (out / "chat_template.jinja").exists()
    assert info["num_parameters"] > 0
    r = merge_parity(tiny["base"], tiny_adapter, out)
    assert r["max_abs_diff"] <= MERGE_MAX_ABS_DIFF and r["top1_agreement"] == 1.0
    # the adapter really changes the model, so parity is not trivially base == merged
    base_vs_merged = merge_parity(tiny["base"], tiny_adapter, tiny["base"])
    assert base_vs_merged["max_abs_diff"] > 100 * MERGE_MAX_ABS_DIFF
