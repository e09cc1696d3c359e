"""What a user sees of the code location does not change by accident: asset keys, groups, kinds, code versions,
partitioning, dependencies, check names and blocking, jobs and sensors."""

import json
from pathlib import Path

from distill_assets.definitions import defs
from tests.surface import surface

RECORDED = Path(__file__).parent / "data" / "definitions_surface.json"


def test_surface_is_unchanged():
    now = surface(defs())
    recorded = json.loads(RECORDED.read_text())
    assert now["assets"] == recorded["assets"]
    assert now["checks"] == recorded["checks"]
    assert now["jobs"] == recorded["jobs"]
    assert now["sensors"] == recorded["sensors"]
