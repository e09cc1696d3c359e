"""The code location as the UI shows it: every asset described, grouped by stage, owned, tagged and kinded."""

from distill_assets.definitions import ACCELERATOR, STAGE_OWNERS, defs
from distill_assets.quickstart import STAGE_GROUPS


def _nodes():
    graph = defs().resolve_asset_graph()
    return {k.to_user_string(): graph.get(k) for k in graph.get_all_asset_keys()}


def test_every_asset_is_described_grouped_owned_tagged_and_kinded():
    nodes = _nodes()
    assert {"seed_prompts", "raw_generations", "clean_dataset", "lora_adapter", "merged_model", "gguf_export",
            "awq_export", "eval_report"} <= set(nodes)
    for name, node in nodes.items():
        assert node.description and len(node.description) > 20, name
        assert node.group_name in (*STAGE_GROUPS, "production"), (name, node.group_name)
        assert node.owners == [STAGE_OWNERS[node.group_name]], name
        assert node.tags["stage"] == node.group_name, name
        assert node.tags["accelerator"] == ACCELERATOR.get(name, "cpu"), name
        assert node.kinds, name


def test_merged_model_belongs_to_training_and_exports_to_export():
    nodes = _nodes()
    assert nodes["lora_adapter"].group_name == nodes["merged_model"].group_name == "training"
    assert nodes["gguf_export"].group_name == nodes["awq_export"].group_name == "export"
