"""The Dagster UI, end to end: ``dagster dev`` on loopback against a fresh DAGSTER_HOME, the
"Materialize all" backfill launched through the webserver's GraphQL API and run by the daemon,
then the global asset lineage page and the assets' own pages rendered by headless Chromium.

Set ``ILSVRC_UPDATE_SCREENSHOT=1`` to rewrite ``docs/lineage.png``, ``docs/box_contact_sheet.png``
and ``docs/images_per_class.png`` from the rendered pages.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from ilsvrc_assets import previews
from ilsvrc_assets_tests.helpers import ALL_CHECKS, OPT_IN_CHECKS, TEST_SHARDS
from ilsvrc_assets_tests.ui import asset_pages
from ilsvrc_assets_tests.ui.browser import Chromium, find_chromium
from ilsvrc_assets_tests.ui.dagster_dev import PROJECT_ROOT, DagsterDev

pytestmark = pytest.mark.long(seconds=450)  # conftest: the long files start first

BACKFILL_TIMEOUT = 10 * 60  # the daemon looks at backfills every 30 s; a loaded machine is slow
PAGE_TIMEOUT = 60
SCREENSHOT = PROJECT_ROOT / "docs" / "lineage.png"
# Done, one way or the other (BulkActionStatus of dagster-graphql).
FINISHED = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
# The lineage page draws each asset's box in full (name, latest event, checks, partitions) only at a
# zoom of 0.6 or more; the top-to-bottom layout of the whole graph fits at about 0.7 at this width.
# The view fits the graph's height under the toolbar drawn over its top; a viewport taller than the
# graph needs keeps the top group's title clear of it. Screenshots at 1.5 device pixels per CSS
# pixel stay sharp when zoomed.
VIEWPORT = (3000, 2400)
PIXEL_RATIO = 1.5
# Persisted UI preferences: the graph drawn top to bottom, the navigation bar folded to icons.
UI_PREFERENCES = {"asset-graph-direction": '"vertical"', "dagster-nav-collapsed": "true"}
# What issue 15 puts on each asset's latest materialisation (on a shard asset: on its last partition's):
# pictures, Markdown with an embedded PNG, and tables; each also a file in <data>/previews/<asset>/.
PICTURES = {
    "train_images": ["images_per_class", "image_sizes"],
    "validation_images": ["images_per_class", "image_sizes"],
    "bounding_boxes": ["box_contact_sheet", "box_areas"],
    "validation_tree": ["validation_classes"],
    "train_tree": ["train_classes"],  # opt-in for the build, but "Materialize all" includes it
    # The sample's training set has PNG and CMYK images, so the train shards converted some.
    "train_shards": ["records_per_shard", "first_records", "converted_images"],
    "validation_shards": ["records_per_shard", "first_records"],
}
TABLES = {
    "train_images": ["smallest_classes"],
    "validation_images": ["smallest_classes"],
    "bounding_boxes": ["box_counts"],
}
# The pictures the README shows, as captured from the page: (asset, metadata key) -> file in docs/.
PICTURE_SCREENSHOTS = {
    ("bounding_boxes", "box_contact_sheet"): "box_contact_sheet.png",
    ("train_images", "images_per_class"): "images_per_class.png",
}
# Large enough for the largest picture's dialog; one device pixel per CSS pixel, so the capture of a
# picture drawn at its natural size has the picture's own pixels.
PICTURE_VIEWPORT = (1600, 1200)
SHARD_COUNTS = {
    **{f"{split}_shards": count for split, count in TEST_SHARDS.items()},
    "train_webdataset": 4,  # ILSVRC_WEBDATASET_*_SHARDS below
    "validation_webdataset": 2,
}

ASSET_NODES = """{ assetNodes {
    assetKey { path }
    groupName
    isPartitioned
    partitionStats { numMaterialized numPartitions numFailed }
    assetMaterializations(limit: 1) { runId }
    assetChecksOrError { ... on AssetChecks { checks {
        name
        executionForLatestMaterialization { status runId } } } }
} }"""

PARTITION_RUNS = """{ assetNodes {
    assetKey { path }
    isPartitioned
    assetMaterializations(limit: 1000) { runId partition }
} }"""

LAUNCH_BACKFILL = """mutation LaunchBackfill($params: LaunchBackfillParams!) {
    launchPartitionBackfill(backfillParams: $params) {
        __typename
        ... on LaunchBackfillSuccess { backfillId }
        ... on PythonError { message stack }
        ... on UnauthorizedError { message }
        ... on PartitionSetNotFoundError { message }
    }
}"""

BACKFILL = """query Backfill($id: String!) {
    partitionBackfillOrError(backfillId: $id) {
        __typename
        ... on PartitionBackfill {
            status
            error { message }
            runs(limit: 100) { runId status }
        }
        ... on PythonError { message }
    }
}"""

RUN_FAILURES = """query RunFailures($runId: ID!) {
    logsForRun(runId: $runId) {
        ... on EventConnection { events {
            __typename
            ... on MessageEvent { message }
            ... on StepEvent { stepKey }
            ... on ErrorEvent { error { message causes { message } } }
        } }
    }
}"""


@dataclass
class Backfill:
    """How "Materialize all" ended: the backfill's final status and runs (id -> status)."""

    backfill_id: str
    status: str
    runs: dict[str, str]
    error: str | None
    seconds: float

    def describe_failures(self, dev: DagsterDev) -> str:
        """The failed runs' failed steps, in the words of their errors."""
        lines = [f"backfill {self.backfill_id}: {self.status}" + (f" ({self.error})" if self.error else "")]
        for run_id, status in self.runs.items():
            lines.append(f"  run {run_id}: {status}")
            if status == "SUCCESS":
                continue
            events = dev.graphql(RUN_FAILURES, runId=run_id)["logsForRun"].get("events", [])
            for event in events:
                if event["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent"):
                    # Dagster wraps the step's own exception; its innermost cause says what went wrong.
                    error = event.get("error") or {}
                    message = ([error] + error.get("causes", []))[-1].get("message") or event.get("message")
                    lines.append(f"    {event.get('stepKey') or 'run'}: {message.strip()}")
        return "\n".join(lines)


@pytest.fixture(scope="module")
def dagster_dev(sample_release: Path, tmp_path_factory: pytest.TempPathFactory):
    """``dagster dev`` over the sample with the tests' small shard counts; stopped afterwards."""
    root = tmp_path_factory.mktemp("ui")
    env = {
        "ILSVRC_SOURCE": "sample",
        "ILSVRC_SAMPLE_DIR": str(sample_release),
        "ILSVRC_DATA_DIR": str(root / "data"),
        "ILSVRC_TRAIN_SHARDS": str(TEST_SHARDS["train"]),
        "ILSVRC_VALIDATION_SHARDS": str(TEST_SHARDS["validation"]),
        # "Materialize all" also writes the WebDataset tars (every format's assets are in the location).
        "ILSVRC_WEBDATASET_TRAIN_SHARDS": "4",
        "ILSVRC_WEBDATASET_VALIDATION_SHARDS": "2",
        "ILSVRC_WORKERS": "2",
        "ILSVRC_SCHEDULES": "stopped",  # no refresh sensor or audit schedule launching runs meanwhile
    }
    with DagsterDev(root / "dagster_home", env, log=root / "dagster_dev.log") as dev:
        yield dev


@pytest.fixture(scope="module")
def asset_keys(dagster_dev: DagsterDev) -> list[list[str]]:
    """Every asset of the code location, as the lineage page lists them."""
    return [node["assetKey"]["path"] for node in dagster_dev.graphql(ASSET_NODES)["assetNodes"]]


@pytest.fixture(scope="module")
def materialize_all(dagster_dev: DagsterDev, asset_keys: list[list[str]]) -> Backfill:
    """What the UI's "Materialize all" launches over this mix of unpartitioned and partitioned
    assets: one asset backfill of every asset and all partitions (the dialog's
    ``{assetSelection, allPartitions: true}``). The daemon of ``dagster dev`` runs it."""
    started = time.monotonic()
    params = {"assetSelection": [{"path": key} for key in asset_keys], "allPartitions": True, "tags": []}
    launched = dagster_dev.graphql(LAUNCH_BACKFILL, params=params)["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]
    deadline = started + BACKFILL_TIMEOUT
    while True:
        backfill = dagster_dev.graphql(BACKFILL, id=backfill_id)["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        if backfill["status"] in FINISHED or time.monotonic() > deadline:
            break
        time.sleep(2)
    return Backfill(
        backfill_id=backfill_id,
        status=backfill["status"],
        runs={run["runId"]: run["status"] for run in backfill["runs"]},
        error=(backfill.get("error") or {}).get("message"),
        seconds=time.monotonic() - started,
    )


def require_success(backfill: Backfill, dev: DagsterDev) -> None:
    if backfill.status != "COMPLETED_SUCCESS" or set(backfill.runs.values()) != {"SUCCESS"}:
        timed_out = backfill.status not in FINISHED
        pytest.fail(
            (f"timed out after {backfill.seconds:.0f} s: " if timed_out else "")
            + backfill.describe_failures(dev)
            + "\n--- dagster dev log ---\n"
            + dev.log_tail()
        )


def test_materialize_all_builds_every_asset_and_passes_every_check(dagster_dev, materialize_all):
    require_success(materialize_all, dagster_dev)
    # Each partitioned asset's whole partition range in one run (its single-run backfill policy), not a
    # run per shard: every partition's materialisation is of the same run. (How Dagster groups the
    # unpartitioned assets into runs around them is its own business.)
    for node in dagster_dev.graphql(PARTITION_RUNS)["assetNodes"]:
        if node["isPartitioned"]:
            events = node["assetMaterializations"]
            name = "/".join(node["assetKey"]["path"])
            assert len(events) == SHARD_COUNTS[name], (name, events)
            assert len({event["runId"] for event in events}) == 1, (name, events)
    assert len(materialize_all.runs) < sum(SHARD_COUNTS.values()), materialize_all.runs

    nodes = dagster_dev.graphql(ASSET_NODES)["assetNodes"]
    checks = {}
    for node in nodes:
        name = "/".join(node["assetKey"]["path"])
        if node["isPartitioned"]:
            stats = node["partitionStats"]
            assert stats["numFailed"] == 0, (name, stats)
            assert stats["numMaterialized"] == stats["numPartitions"] == SHARD_COUNTS[name], (name, stats)
        latest = node["assetMaterializations"]
        assert latest and latest[0]["runId"] in materialize_all.runs, (
            f"{name} not materialised by the backfill"
        )
        for check in node["assetChecksOrError"]["checks"]:
            checks[f"{name}:{check['name']}"] = check["executionForLatestMaterialization"]
    assert set(checks) == ALL_CHECKS | OPT_IN_CHECKS
    not_passed = {
        name: execution
        for name, execution in checks.items()
        if (execution or {}).get("status") != "SUCCEEDED"
    }
    assert not_passed == {}
    assert {execution["runId"] for execution in checks.values()} <= set(materialize_all.runs)


@pytest.fixture(scope="module")
def chromium_binary() -> str:
    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    return binary


def test_lineage_page_shows_every_asset_with_its_checks_passed(
    dagster_dev, materialize_all, chromium_binary, tmp_path
):
    require_success(materialize_all, dagster_dev)
    nodes = dagster_dev.graphql(ASSET_NODES)["assetNodes"]
    # What each asset's box on the page must say about its checks (and that it is materialised).
    expected = {}
    for node in nodes:
        count = len(node["assetChecksOrError"]["checks"])
        checks = f"{count} / {count} Passed" if count else "Asset checks\n–"
        if node["isPartitioned"]:
            materialized = ["100% filled", f"{SHARD_COUNTS['/'.join(node['assetKey']['path'])]} partitions"]
        else:
            materialized = ["Materialized"]
        expected["/".join(node["assetKey"]["path"])] = [checks, *materialized]
    groups = sorted({node["groupName"] for node in nodes})
    # The global lineage, every group expanded (what "Expand all groups" puts in the URL).
    url = f"{dagster_dev.url}/asset-groups?expanded=" + ",".join(f"global@global:{group}" for group in groups)
    # The community sign-up dialog a loopback UI shows once; "Skip" in the dialog does this.
    dagster_dev.graphql("mutation { setNuxSeen }")

    with Chromium(chromium_binary, *VIEWPORT, scale=PIXEL_RATIO) as browser:
        browser.open(f"{dagster_dev.url}/server_info")  # the origin whose storage the UI reads
        for key, value in UI_PREFERENCES.items():
            browser.evaluate(f"localStorage.setItem({json.dumps(key)}, {json.dumps(value)})")
        browser.open(url)
        browser.wait_for_text(groups, PAGE_TIMEOUT)
        boxes = wait_for_asset_boxes(browser, expected)
        assert set(boxes) == set(expected), (
            f"asset boxes drawn in full: {sorted(boxes)}; expected {sorted(expected)} (boxes show their "
            "details only at zoom >= 0.6: if the graph has grown, enlarge VIEWPORT)"
        )
        for name, wanted in expected.items():
            for text in wanted:
                assert text in boxes[name], f"{name}: {text!r} not in its box on the page:\n{boxes[name]}"
        if os.environ.get("ILSVRC_UPDATE_SCREENSHOT") == "1":
            save_graph_screenshot(browser, SCREENSHOT)
        else:
            save_graph_screenshot(browser, tmp_path / "lineage.png")  # the capture itself must work


# Each asset box of the graph is an SVG foreignObject; its text starts with the asset's name.
ASSET_BOXES = """(() => {
    const boxes = {};
    for (const object of document.querySelectorAll('svg foreignObject')) {
        const text = object.firstElementChild ? object.firstElementChild.innerText.trim() : '';
        const name = text.split('\\n')[0];
        if (name && text.includes('Latest event')) boxes[name] = text;
    }
    return boxes;
})()"""


def wait_for_asset_boxes(browser: Chromium, expected: dict[str, list[str]]) -> dict[str, str]:
    """The text of every asset's box, once all are drawn and their status has arrived."""
    deadline = time.monotonic() + PAGE_TIMEOUT
    while True:
        boxes = browser.evaluate(ASSET_BOXES) or {}
        if set(boxes) == set(expected) and all(
            all(text in boxes[name] for text in wanted) for name, wanted in expected.items()
        ):
            return boxes
        if time.monotonic() > deadline:
            return boxes  # the caller's assertions name what is missing
        time.sleep(0.5)


# The smallest rectangle holding every box of the graph, within the graph's part of the page (below
# its toolbar), in CSS pixels of the viewport.
GRAPH_BOUNDS = """(() => {
    const objects = [...document.querySelectorAll('svg foreignObject')];
    const view = objects[0].ownerSVGElement.parentElement.parentElement.getBoundingClientRect();
    const toolbar = document.querySelector('[class*="topbarWrapper"]');  // drawn over the graph
    const viewTop = toolbar ? toolbar.getBoundingClientRect().bottom + 1 : view.top;
    let left = Infinity, top = Infinity, right = -Infinity, bottom = -Infinity;
    for (const object of objects) {
        const r = object.getBoundingClientRect();
        if (r.width === 0) continue;
        left = Math.min(left, r.left); top = Math.min(top, r.top);
        right = Math.max(right, r.right); bottom = Math.max(bottom, r.bottom);
    }
    return {left: Math.max(left - 16, view.left), top: Math.max(top - 16, viewTop),
            right: Math.min(right + 16, view.right), bottom: Math.min(bottom + 16, view.bottom)};
})()"""


def save_graph_screenshot(browser: Chromium, path: Path) -> None:
    """The drawn graph, cropped to its boxes, as PNG."""
    bounds = browser.evaluate(GRAPH_BOUNDS)
    clip = {
        "x": bounds["left"],
        "y": bounds["top"],
        "width": bounds["right"] - bounds["left"],
        "height": bounds["bottom"] - bounds["top"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    browser.screenshot(path, clip)
    assert path.stat().st_size > 50_000, f"{path}: suspiciously small for a drawn graph"


PARTITION_METADATA = """query PartitionMetadata($key: AssetKeyInput!) {
    assetNodeOrError(assetKey: $key) { ... on AssetNode { partitionKeys } }
    assetOrError(assetKey: $key) { ... on Asset {
        assetMaterializations { partition metadataEntries { label } } } }
}"""


def partition_with_pictures(dev: DagsterDev, asset: str, key: str) -> str:
    """The partition whose materialisation carries the shard asset's pictures: the last of the run
    that wrote the whole range (metadata of the step's result would be copied onto every one)."""
    answer = dev.graphql(PARTITION_METADATA, key={"path": [asset]})
    keys = answer["assetNodeOrError"]["partitionKeys"]
    carrying = sorted(
        {
            event["partition"]
            for event in answer["assetOrError"]["assetMaterializations"]
            if any(entry["label"] == key for entry in event["metadataEntries"])
        }
    )
    assert carrying == [keys[-1]], f"{asset}: {key} on partitions {carrying}, expected on {keys[-1]} only"
    return carrying[0]


def test_asset_pages_show_their_pictures_and_tables(dagster_dev, materialize_all, chromium_binary, tmp_path):
    """Each asset's page shows its pictures (the very PNG written beside the outputs, decoded by the
    browser) and its tables (every row of the CSV written beside the outputs)."""
    require_success(materialize_all, dagster_dev)
    data_dir = Path(dagster_dev.env["ILSVRC_DATA_DIR"])
    update = os.environ.get("ILSVRC_UPDATE_SCREENSHOT") == "1"
    dagster_dev.graphql("mutation { setNuxSeen }")  # no community sign-up dialog over the page
    problems = []
    captured = []
    with Chromium(chromium_binary, *PICTURE_VIEWPORT) as browser:
        browser.open(f"{dagster_dev.url}/server_info")  # the origin whose storage the UI reads
        browser.evaluate("localStorage.setItem('dagster-nav-collapsed', 'true')")
        for asset, pictures in PICTURES.items():
            tables = TABLES.get(asset, [])
            folder = previews.folder_for(data_dir, asset)
            partition = (
                partition_with_pictures(dagster_dev, asset, pictures[0]) if asset in SHARD_COUNTS else None
            )
            where = asset + (f" partition {partition}" if partition else "")
            browser.open(asset_pages.asset_url(dagster_dev.url, asset, partition))
            asset_pages.wait_for_metadata(browser, [*pictures, *tables], PAGE_TIMEOUT)
            for key in pictures:
                shown = asset_pages.show_picture(browser, key, PAGE_TIMEOUT)
                prefix = "data:image/png;base64,"
                if not shown.src.startswith(prefix):
                    problems.append(
                        f"{where}: {key}: the image's src is {shown.src[:40]!r}…, not a PNG data URI"
                    )
                elif base64.b64decode(shown.src.removeprefix(prefix)) != (folder / f"{key}.png").read_bytes():
                    problems.append(f"{where}: {key}: the page's PNG is not {folder / key}.png")
                if (asset, key) in PICTURE_SCREENSHOTS:
                    name = PICTURE_SCREENSHOTS[asset, key]
                    path = (PROJECT_ROOT / "docs" if update else tmp_path) / name
                    asset_pages.save_element_screenshot(browser, shown.rect, path)
                    captured.append((path, shown))
                asset_pages.close_dialog(browser, PAGE_TIMEOUT)
            for key in tables:
                lines = asset_pages.table_lines(browser, key)
                with (folder / f"{key}.csv").open(newline="") as file:
                    wanted = ["\t".join(row) for row in csv.reader(file)]
                if lines[-len(wanted) :] != wanted:
                    problems.append(f"{where}: {key}: the page's table {lines} is not the CSV's {wanted}")
    assert not problems, "pictures and tables not as written beside the outputs:\n" + "\n".join(problems)
    for path, shown in captured:
        # The capture is the image element as drawn: its size, and a picture rather than blank.
        with Image.open(path) as picture:
            assert picture.size == (round(shown.rect["width"]), round(shown.rect["height"])), (
                path,
                picture.size,
            )
            extrema = picture.convert("L").getextrema()
        assert extrema[1] - extrema[0] > 100, f"{path}: nearly uniform ({extrema}), not the picture"
