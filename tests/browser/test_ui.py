"""The Dagster UI as a user sees it, in headless Debian Chromium driven by Playwright.

`dagster dev` runs on loopback with a fresh DAGSTER_HOME (telemetry off: there is no network) and a fresh
DISTILL_HOME; the teacher is the fake OpenAI server started here, so generation takes seconds. The test
materializes seed_prompts and raw_generations for one partition through clicks in the asset catalog, waits for
the run to succeed in the Runs page, then opens the asset and reads its metadata and check results. Another
test launches a backfill of two chosen categories of seed_prompts from the asset's Materialize… dialog, lets
the daemon of `dagster dev` run it, and checks in the instance that only those partitions were materialized.
Screenshots land in test-artifacts/ui/ (git-ignored; CI keeps them as artifacts).

Needs /usr/bin/chromium (`apt-get install -y chromium`) and the playwright package (`pip install playwright`;
never `playwright install`: its browser download fails on a closed network).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser]  # runs in CI: the UI is the front door

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "ui"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PARTITION = os.environ.get("DISTILL_UI_TEST_PARTITION", "support")
ASSETS = ("seed_prompts", "raw_generations")
STARTUP_TIMEOUT_S = 240  # 2 shared cores: the webserver, daemon and code server import dagster and torch
RUN_TIMEOUT_S = 420

if not CHROMIUM.exists():
    pytest.skip("needs Debian's Chromium at /usr/bin/chromium (apt-get install -y chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (pip install playwright)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not up after {timeout_s}s:\n{log.read_text()[-4000:]}")


def _graphql(base: str, query: str) -> dict:
    import json

    req = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _stop(proc: subprocess.Popen) -> None:
    # dagster dev owns a process group (webserver, daemon, code servers); end that group, and only it.
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


@pytest.fixture(scope="module")
def fake_teacher():
    from tests.fakes.openai_server import FakeOpenAIServer

    # Bound on 127.0.0.1 in this process; the URL is visible to dagster's subprocesses on loopback.
    with FakeOpenAIServer(latency_s=0.01) as server:
        yield server


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory, fake_teacher):
    root = tmp_path_factory.mktemp("ui")
    dagster_home, distill_home = root / "dagster_home", root / "distill_home"
    dagster_home.mkdir()
    distill_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "DISTILL_HOME": str(distill_home),
           "TEACHER_BASE_URL": fake_teacher.base_url, "TEACHER_MODEL": fake_teacher.model,
           "TEACHER_API_KEY": "test", "PYTHONUNBUFFERED": "1"}
    for k in ("JUDGE_BASE_URL", "JUDGE_MODEL", "JUDGE_API_KEY"):
        env.pop(k, None)
    log = root / "dagster-dev.log"
    dagster = Path(sys.executable).with_name("dagster")
    cmd = [str(dagster) if dagster.exists() else "dagster", "dev", "-w", str(REPO / "workspace.yaml"),
           "-h", "127.0.0.1", "-p", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{base}/server_info", proc, log, STARTUP_TIMEOUT_S)
        # The webserver answers before the code location has loaded; wait until the graph is served.
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            data = _graphql(base, "{ assetNodes { assetKey { path } } }")
            keys = {"/".join(n["assetKey"]["path"]) for n in (data.get("data") or {}).get("assetNodes") or []}
            if set(ASSETS) <= keys:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"code location has no {ASSETS} after {STARTUP_TIMEOUT_S}s: {data}\n"
                                   f"{log.read_text()[-4000:]}")
            time.sleep(2)
        yield {"base": base, "log": log, "distill_home": distill_home, "keys": keys, "env": env}
    finally:
        _stop(proc)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, ARTIFACTS / "dagster-dev.log")


@pytest.fixture(scope="module")
def page(dagster_ui):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        context.set_default_timeout(60_000)
        pg = context.new_page()
        try:
            yield pg
        finally:
            context.close()
            browser.close()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _dismiss_community_dialog(page) -> None:
    # First visit on a fresh instance: "Join the Dagster community" covers the page; a user clicks Skip.
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(state="visible", timeout=15_000)
    except sync_api.TimeoutError:
        return
    _shot(page, "00-community-dialog")
    skip.click()
    skip.wait_for(state="hidden")


_CHECKS: dict[str, list[str]] = {}


def _load_checks(base: str) -> None:
    q = "{ assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name } } } } }"
    data = _graphql(base, q).get("data") or {}
    for n in data.get("assetNodes") or []:
        key = "/".join(n["assetKey"]["path"])
        checks = (n.get("assetChecksOrError") or {}).get("checks") or []
        _CHECKS[key] = [c["name"] for c in checks]


STAGE_GROUPS = ("seeds", "generation", "filtering", "dataset", "training", "export", "evaluation")


def _served_groups(base: str) -> set[str]:
    data = _graphql(base, "{ assetNodes { groupName } }").get("data") or {}
    return {n["groupName"] for n in data.get("assetNodes") or []}


def _filter_catalog(page, selection: str) -> None:
    # The catalog's search box is a CodeMirror editor that takes Dagster's selection syntax.
    page.locator(".CodeMirror").first.click()
    page.keyboard.type(selection)
    page.keyboard.press("Enter")


def _catalog_row(page, asset: str):
    return page.locator("div[class*=VirtualizedTable_row]", has=page.get_by_text(asset, exact=True))


def test_asset_graph_shows_assets_and_groups(dagster_ui, page):
    base = dagster_ui["base"]
    page.goto(f"{base}/asset-groups", wait_until="domcontentloaded")
    _dismiss_community_dialog(page)
    # The global lineage opens with one box per group; every stage group the code location serves is shown.
    served = _served_groups(base)
    expected = [g for g in STAGE_GROUPS if g in served]
    assert {"seeds", "generation"} <= set(expected), f"served groups: {sorted(served)}"
    for group in expected:
        sync_api.expect(page.get_by_text(group, exact=True).first).to_be_visible()
    page.wait_for_timeout(1500)
    _shot(page, "01-global-lineage-groups")

    # A group's page lays out its assets, with their upstream and downstream neighbours.
    page.goto(f"{base}/locations/distill/asset-groups/generation", wait_until="domcontentloaded")
    for asset in ASSETS:
        sync_api.expect(page.get_by_text(asset, exact=True).first).to_be_visible()
    page.wait_for_timeout(1500)
    _shot(page, "02-generation-group-graph")

    # The catalog lists the assets with their group and a description line.
    page.goto(f"{base}/assets", wait_until="domcontentloaded")
    _filter_catalog(page, " or ".join(f'key:"{a}"' for a in ASSETS))
    for asset, group in zip(ASSETS, ("seeds", "generation")):
        row = _catalog_row(page, asset)
        sync_api.expect(row).to_be_visible()
        sync_api.expect(row.get_by_text(group, exact=True)).to_be_visible()
        assert len(row.inner_text().strip().splitlines()) >= 3, f"{asset} shows no description in the catalog"
    _shot(page, "03-asset-catalog")


def test_materialize_from_ui_and_inspect(dagster_ui, page):
    base = dagster_ui["base"]
    _load_checks(base)
    page.goto(f"{base}/assets", wait_until="domcontentloaded")
    _dismiss_community_dialog(page)
    _filter_catalog(page, " or ".join(f'key:"{a}"' for a in ASSETS))
    for asset in ASSETS:
        _catalog_row(page, asset).locator("label[class*=Checkbox]").first.click()
    page.get_by_role("button", name=re.compile(r"Materialize selected")).click()
    dialog = page.get_by_role("dialog").first
    sync_api.expect(dialog.get_by_text("Launch runs to materialize 2 assets")).to_be_visible()
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_placeholder("Filter partitions").fill(PARTITION)
    page.locator("label").filter(has=page.get_by_text(PARTITION, exact=True)).first.click()
    page.keyboard.press("Escape")  # close the partition picker, not the dialog
    sync_api.expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    _shot(page, "04-launch-dialog-one-partition")
    dialog.get_by_role("button", name=re.compile(r"^Launch 1 run$")).click()
    sync_api.expect(page.get_by_role("dialog")).to_have_count(0)

    # Follow the run in the Runs page, as a user would, until it succeeds (or fails: then say why).
    deadline = time.monotonic() + RUN_TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        page.goto(f"{base}/runs", wait_until="domcontentloaded")
        page.wait_for_timeout(3000)
        text = page.inner_text("body")
        if re.search(r"\bSuccess\b", text):
            status = "Success"
            break
        if re.search(r"\bFailure\b", text):
            status = "Failure"
            break
        time.sleep(5)
    _shot(page, "05-runs")
    if status != "Success":
        log = dagster_ui["log"].read_text()[-3000:]
        pytest.fail(f"run did not succeed from the UI (status {status}); dagster dev log tail:\n{log}")

    # Open the run: both assets' steps are there.
    page.locator("a[href^='/runs/']").filter(has_text=re.compile(r"^[0-9a-f]{8}$")).first.click()
    for asset in ASSETS:
        sync_api.expect(page.get_by_text(asset).first).to_be_visible()
    page.wait_for_timeout(2000)
    _shot(page, "06-run-detail")

    # The asset page shows the materialization's metadata for the partition.
    for asset in ASSETS:
        page.goto(f"{base}/assets/{asset}?partition={PARTITION}", wait_until="domcontentloaded")
        sync_api.expect(page.get_by_text("rows", exact=True).first).to_be_visible(timeout=60_000)
        sync_api.expect(page.get_by_text(PARTITION).first).to_be_visible()
        page.wait_for_timeout(1500)
        _shot(page, f"07-{asset}-overview")
        checks = _CHECKS.get(asset, [])
        if not checks:
            continue
        page.goto(f"{base}/assets/{asset}?view=checks", wait_until="domcontentloaded")
        for name in checks:
            sync_api.expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=60_000)
        body = page.inner_text("body")
        assert re.search(r"\b(Passed|Failed|Warning)\b", body), f"{asset}: no check result shown:\n{body[-1500:]}"
        page.wait_for_timeout(1000)
        _shot(page, f"08-{asset}-checks")

    # The raw_generations metadata is what a user wants: rows, tokens, cost, a preview.
    page.goto(f"{base}/assets/raw_generations?partition={PARTITION}", wait_until="domcontentloaded")
    body = page.get_by_text("rows", exact=True).first
    sync_api.expect(body).to_be_visible(timeout=60_000)
    text = page.inner_text("body")
    for label in ("cost_usd", "preview"):
        if label not in text:
            pytest.fail(f"raw_generations overview lacks the {label!r} metadata entry")


BACKFILL_TIMEOUT_S = 900  # two runs launched by the daemon, each a fresh process on 2 shared cores
BACKFILL_ASSET = "seed_prompts"  # the cheapest partitioned asset: reads the demo seed files, calls no model


def _all_partitions() -> list[str]:
    from distill_assets.defs.partitions import CATEGORY

    return list(CATEGORY.get_partition_keys())


def _backfill_partitions() -> list[str]:
    # Two categories, never the one test_materialize_from_ui_and_inspect materializes, so that "only those
    # partitions" is checked against a partition that does have a materialization from another run.
    others = [c for c in _all_partitions() if c != PARTITION]
    preferred = [c for c in ("math", "code") if c in others]
    chosen = (preferred + [c for c in others if c not in preferred])[:2]
    assert len(chosen) == 2, f"the task file needs 3 categories for this test: {_all_partitions()}"
    return chosen


def _materializations_by_partition(instance, asset: str) -> dict[str, list[str]]:
    import dagster as dg

    out: dict[str, list[str]] = {}
    cursor = None
    while True:
        result = instance.fetch_materializations(dg.AssetKey(asset), limit=500, cursor=cursor)
        for r in result.records:
            out.setdefault(r.partition_key, []).append(r.run_id)
        if not result.has_more:
            return out
        cursor = result.cursor


def test_backfill_chosen_categories_from_ui(dagster_ui, page):
    import dagster as dg
    from dagster._core.events import DagsterEventType
    from dagster._core.execution.backfill import BulkActionStatus

    base = dagster_ui["base"]
    chosen = _backfill_partitions()
    with dg.DagsterInstance.from_config(dagster_ui["env"]["DAGSTER_HOME"]) as instance:
        before = _materializations_by_partition(instance, BACKFILL_ASSET)
        backfills_before = {b.backfill_id for b in instance.get_backfills()}

        # The asset's page: Materialize… opens the launch dialog with its partition selector.
        page.goto(f"{base}/assets/{BACKFILL_ASSET}", wait_until="domcontentloaded")
        _dismiss_community_dialog(page)
        page.get_by_role("button", name=re.compile(r"Materialize…")).first.click()  # name: icon label + text
        dialog = page.get_by_role("dialog").first
        sync_api.expect(dialog.get_by_text(f"Launch runs to materialize {BACKFILL_ASSET}")).to_be_visible()
        # It opens on "Custom" with nothing selected. (Clicking "Custom" again would select all 4: don't.)
        sync_api.expect(dialog.get_by_text("0 partitions", exact=True)).to_be_visible()
        dialog.get_by_text("Select a partition or create one").click()
        picker = page.get_by_role("menu").filter(has=page.get_by_placeholder("Filter partitions")).first
        for cat in chosen:
            picker.get_by_placeholder("Filter partitions").fill(cat)
            item = picker.get_by_role("menuitem").filter(has=page.get_by_text(cat, exact=True))
            sync_api.expect(item).to_have_count(1)
            item.click()
            sync_api.expect(item.get_by_role("checkbox")).to_be_checked()
        page.wait_for_timeout(500)  # let the checkbox animation finish for the screenshot
        _shot(page, "10-backfill-partition-picker")
        page.keyboard.press("Escape")  # close the partition picker, not the dialog
        sync_api.expect(dialog.get_by_text("2 partitions", exact=True)).to_be_visible()
        for cat in chosen:
            sync_api.expect(dialog.get_by_text(cat, exact=True).first).to_be_visible()
        _shot(page, "11-backfill-launch-dialog")
        dialog.get_by_role("button", name="Launch backfill", exact=True).click()
        sync_api.expect(page.get_by_role("dialog")).to_have_count(0)

        # The UI confirms with a toast naming the backfill; the instance has it, for exactly those partitions.
        toast = page.get_by_text(re.compile(r"Created backfill \w+"))
        sync_api.expect(toast).to_be_visible()
        backfill_id = re.search(r"Created backfill (\w+)", toast.inner_text()).group(1)
        page.wait_for_timeout(800)  # the toast slides in
        _shot(page, "12-backfill-created-toast")
        assert set(b.backfill_id for b in instance.get_backfills()) - backfills_before == {backfill_id}
        backfill = instance.get_backfill(backfill_id)
        assert backfill.is_asset_backfill
        assert [k.to_user_string() for k in backfill.asset_selection] == [BACKFILL_ASSET]
        if backfill.asset_backfill_data is not None:  # stored deserialized by this Dagster version
            target = backfill.asset_backfill_data.target_subset.get_partitions_subset(dg.AssetKey(BACKFILL_ASSET))
            assert sorted(target.get_partition_keys()) == sorted(chosen)

        # The daemon that `dagster dev` started runs it: one run per partition, then the backfill completes.
        terminal = {BulkActionStatus.COMPLETED_SUCCESS, BulkActionStatus.COMPLETED_FAILED, BulkActionStatus.FAILED,
                    BulkActionStatus.CANCELED, BulkActionStatus.COMPLETED}
        deadline = time.monotonic() + BACKFILL_TIMEOUT_S
        while (status := instance.get_backfill(backfill_id).status) not in terminal:
            if time.monotonic() > deadline:
                _shot(page, "13-backfill-timeout")
                pytest.fail(f"backfill {backfill_id} still {status.value} after {BACKFILL_TIMEOUT_S}s; "
                            f"dagster dev log tail:\n{dagster_ui['log'].read_text()[-3000:]}")
            time.sleep(5)
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        run_states = {r.tags.get("dagster/partition"): r.status.value for r in runs}
        if status != BulkActionStatus.COMPLETED_SUCCESS:
            pytest.fail(f"backfill {backfill_id} ended {status.value}; runs {run_states}; dagster dev log tail:\n"
                        f"{dagster_ui['log'].read_text()[-3000:]}")
        assert run_states == {cat: "SUCCESS" for cat in chosen}, run_states

        # Only the chosen partitions of seed_prompts got a new materialization, each from the backfill's runs,
        # and those runs materialized nothing else (not raw_generations downstream).
        after = _materializations_by_partition(instance, BACKFILL_ASSET)
        new = {p: [r for r in after.get(p, []) if r not in before.get(p, [])] for p in set(after) | set(before)}
        touched = {p for p, rs in new.items() if rs}
        assert touched == set(chosen), f"backfill of {chosen} materialized {sorted(touched)}"
        backfill_runs = {r.run_id for r in runs}
        assert all(set(new[p]) <= backfill_runs for p in chosen), new
        assert instance.get_materialized_partitions(dg.AssetKey(BACKFILL_ASSET)) >= set(chosen)
        for p in set(before) - set(chosen):
            assert after[p] == before[p], f"partition {p} changed: {before[p]} -> {after[p]}"
        for run in runs:
            records = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION).records
            keys = {(r.event_log_entry.dagster_event.asset_key.to_user_string(), r.partition_key) for r in records}
            assert keys == {(BACKFILL_ASSET, run.tags["dagster/partition"])}, keys

    # The user's view: Runs → Backfills lists it as a success; its page shows the chosen partitions.
    page.goto(f"{base}/runs", wait_until="domcontentloaded")
    page.get_by_role("tab", name="Backfills").click()
    link = page.get_by_role("link", name=re.compile(rf"\b{backfill_id}$"))  # name: icon label + id
    row = page.locator("div[class*=VirtualizedTable_row]", has=link)
    sync_api.expect(row).to_be_visible(timeout=120_000)
    sync_api.expect(row.get_by_text("Success", exact=True)).to_be_visible(timeout=120_000)
    sync_api.expect(row.get_by_text("2 partitions", exact=True)).to_be_visible()
    sync_api.expect(row.get_by_text(BACKFILL_ASSET, exact=True).first).to_be_visible()
    page.wait_for_timeout(1000)
    _shot(page, "13-backfills-list")

    link.click()
    page.wait_for_url(re.compile(rf"/runs/b/{backfill_id}"))
    sync_api.expect(page.get_by_text("Succeeded", exact=True).first).to_be_visible(timeout=120_000)
    sync_api.expect(page.get_by_text("100% completed")).to_be_visible(timeout=120_000)
    for cat in chosen:
        sync_api.expect(page.get_by_text(cat, exact=True).first).to_be_visible()
    page.wait_for_timeout(1000)
    _shot(page, "14-backfill-detail")

    # The asset's Partitions tab counts the chosen categories plus what other tests materialized, no more.
    page.goto(f"{base}/assets/{BACKFILL_ASSET}?view=partitions", wait_until="domcontentloaded")
    materialized = len(set(before) | set(chosen))
    sync_api.expect(page.get_by_text(f"Materialized ({materialized})", exact=True)).to_be_visible(timeout=60_000)
    sync_api.expect(page.get_by_text(f"Missing ({len(_all_partitions()) - materialized})", exact=True)).to_be_visible()
    page.wait_for_timeout(1500)
    _shot(page, "15-seed_prompts-partitions")
