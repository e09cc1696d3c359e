"""atomic_dir under kill -9: a child process replaces a complete artifact folder and is killed at each step
(while writing, after the fsync before the swap, after the swap before the old copy is removed, and on the
fallback path between setting the old folder aside and renaming the new one in). Afterwards the folder is the
old complete one or the new complete one, never missing and never half-written."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from distill_assets.lib.artifacts import atomic_dir, is_complete, recover_dir

REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from distill_assets.lib import artifacts

    final, point, flag = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

    def pause(tag):
        if tag == point:
            flag.write_text(tag)
            time.sleep(600)

    real_fsync_tree, real_exchange, real_rename = artifacts._fsync_tree, artifacts._exchange, os.rename

    def fsync_tree(root):
        real_fsync_tree(root)
        pause("before_swap")

    def exchange(a, b):
        if point == "fallback":
            return False
        done = real_exchange(a, b)
        pause("after_swap")
        return done

    def rename(src, dst):
        real_rename(src, dst)
        if Path(src) == final:
            pause("fallback")

    artifacts._fsync_tree, artifacts._exchange, artifacts.os.rename = fsync_tree, exchange, rename
    with artifacts.atomic_dir(final) as tmp:
        (tmp / "weights.bin").write_bytes(b"new" * 1000)
        pause("writing")
        (tmp / "config.json").write_text('{"version": "new"}')
""")


def _old(final: Path) -> None:
    with atomic_dir(final) as tmp:
        (tmp / "weights.bin").write_bytes(b"old" * 1000)
        (tmp / "config.json").write_text('{"version": "old"}')


def _version(final: Path) -> str:
    assert is_complete(final), f"{final} is missing or incomplete: {list(final.parent.iterdir())}"
    cfg = (final / "config.json").read_text()
    weights = (final / "weights.bin").read_bytes()
    version = "new" if '"new"' in cfg else "old"
    assert weights == version.encode() * 1000, "config and weights of different writes"
    return version


@pytest.mark.parametrize("point,expect", [("writing", "old"), ("before_swap", "old"), ("after_swap", "new"),
                                          ("fallback", "old")])
def test_kill_9_leaves_the_old_or_the_new_folder(tmp_path, point, expect):
    final = tmp_path / "merged_model" / "abc"
    _old(final)
    flag = tmp_path / "flag"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(final), point, str(flag)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None, f"the child exited ({proc.returncode}) before reaching {point}"
            assert time.monotonic() < deadline, f"the child never reached {point}"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    if point == "fallback":  # without an atomic swap the old folder sits aside until the next writer or reader
        assert not final.exists()
        recover_dir(final)
    assert _version(final) == expect
    leftovers = [p.name for p in final.parent.iterdir() if p.name != final.name]
    _old(final)  # the next writer sweeps what the dead one left
    assert _version(final) == "old" and [p.name for p in final.parent.iterdir()] == [final.name], leftovers


def test_replace_swaps_without_a_gap(tmp_path):
    final = tmp_path / "a"
    _old(final)
    with atomic_dir(final) as tmp:
        (tmp / "weights.bin").write_bytes(b"new" * 1000)
        (tmp / "config.json").write_text('{"version": "new"}')
        assert _version(final) == "old"  # readers see the old one until the swap
    assert _version(final) == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["a"]
