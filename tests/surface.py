"""The code location's visible surface: asset keys, groups, kinds, code versions, partitioning and deps, the
checks (asset, name, blocking), jobs and sensors. `python -m tests.surface > tests/data/definitions_surface.json`
records it after a deliberate change."""

import json
import os
import sys

import dagster as dg


def surface(d: dg.Definitions) -> dict:
    rg = d.get_repository_def().asset_graph
    out = {"assets": {}, "checks": [], "jobs": [], "sensors": []}
    for key in sorted(rg.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        n = rg.get(key)
        if not n.is_materializable:
            continue
        out["assets"][key.to_user_string()] = {
            "group": n.group_name, "code_version": n.code_version, "kinds": sorted(n.kinds),
            "partitioned": n.partitions_def is not None,
            "deps": sorted(p.to_user_string() for p in n.parent_keys),
        }
    for ck in sorted(rg.asset_check_keys, key=lambda c: (c.asset_key.to_user_string(), c.name)):
        spec = rg.get_check_spec(ck)
        out["checks"].append({"asset": ck.asset_key.to_user_string(), "name": ck.name, "blocking": spec.blocking})
    repo = d.get_repository_def()
    out["jobs"] = sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__ASSET_JOB"))
    out["sensors"] = sorted(s.name for s in repo.sensor_defs)
    return out


if __name__ == "__main__":
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    from distill_assets.definitions import defs

    json.dump(surface(defs()), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
