"""Shared fixtures: the built-in sample release (generated once per test session), the graph built
from it once, and settings for a private output folder. The plain helpers are in ``helpers.py``."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ilsvrc_assets.settings import Settings
from ilsvrc_assets_tests.helpers import build_all, make_settings


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: half as many workers again as cores. Much of the suite waits rather than computes (on
    the daemon's 30 s backfill ticks, servers and subprocesses starting, a browser), so one worker per
    core left a quarter of the CPU idle (41 CPU-minutes in 27 minutes on 2 cores). xdist's own
    ``PYTEST_XDIST_AUTO_NUM_WORKERS`` still decides when set."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None
    cores = len(os.sched_getaffinity(0))
    return cores + cores // 2


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "long(seconds): a test file that takes minutes (whole builds, servers, a browser), about this "
        "long on 2 busy cores; the longest start first",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files marked ``long`` first, longest first; the rest after them, in the random order
    pytest-randomly gave them (it shuffles before this hook runs; the sort is stable). xdist hands the
    files to workers in this order, so no worker starts a build of several minutes when the others
    are nearly done (a random order left one running 8 minutes alone). ``--no-loadscope-reorder`` (in
    addopts) keeps xdist from re-sorting the files by their number of tests."""

    def seconds(item: pytest.Item) -> float:
        mark = item.get_closest_marker("long")
        return mark.kwargs.get("seconds", 60) if mark else 0

    items.sort(key=seconds, reverse=True)


@pytest.fixture(scope="session")
def sample_release(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The default built-in sample: five archives in the official layout plus MD5SUMS, read-only.

    One for the whole session: the xdist workers share the folder above their own temporary folders,
    and the first to ask generates it while the others wait on a lock (each generating its own cost
    a core-minute per worker)."""
    from ilsvrc_assets import sample

    cache = os.environ.get("ILSVRC_TEST_SAMPLE_CACHE")  # reuse across local test sessions if set
    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # xdist: .../pytest-N/popen-gwK is this worker's; .../pytest-N is shared
        shared = shared.parent
    folder = Path(cache) if cache else shared / "sample-release"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        return sample.ensure_sample(folder)


@pytest.fixture(scope="session")
def built_sample_graph(sample_release: Path, tmp_path_factory: pytest.TempPathFactory):
    """The whole graph built once from the sample source, with a persistent instance.

    Yields (settings, instance, results, failed). Tests that damage its outputs restore them.
    """
    from dagster import DagsterInstance

    root = tmp_path_factory.mktemp("graph")
    settings = make_settings(root / "data", None, source="sample", sample_dir=sample_release)
    (root / "dagster_home").mkdir()
    instance = DagsterInstance.local_temp(str(root / "dagster_home"))
    results, failed = build_all(settings, instance)
    yield settings, instance, results, failed
    instance.dispose()


@pytest.fixture(scope="module")
def built_graph_copy(built_sample_graph, tmp_path_factory: pytest.TempPathFactory):
    """(settings, a copy of the built graph's instance with all its history), for tests that launch
    runs of their own: the shared instance's run history stays as the graph tests expect it."""
    from dagster import DagsterInstance

    settings, instance, _, _ = built_sample_graph
    home = tmp_path_factory.mktemp("instance-copy") / "dagster_home"
    shutil.copytree(instance.root_directory, home)
    with DagsterInstance.local_temp(str(home)) as copy:
        yield settings, copy


@pytest.fixture
def settings_for(tmp_path: Path) -> Callable[..., Settings]:
    def make(local_dir: Path, **overrides) -> Settings:
        return make_settings(tmp_path / "data", local_dir, **overrides)

    return make
