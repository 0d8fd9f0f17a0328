"""Two runs at once: the main command twice, or two runs of the same shard partition. No corruption,
and a clear outcome: the second is refused, naming the first, and a later run completes.

The runs go to a copy of the built graph's instance (``built_graph_copy``); the outputs are the
built graph's own, restored exactly where a test damages them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from ilsvrc_assets import fileio, versions
from ilsvrc_assets.cli import EXIT_BUSY, failure_message
from ilsvrc_assets.definitions import JOB_NAMES
from ilsvrc_assets_tests.helpers import (
    build_env,
    discard_unpublished,
    kill_when,
    make_settings,
    run_job,
    temp_files,
)

pytestmark = pytest.mark.long(seconds=90)  # conftest: the long files start first


def _step_failure(result) -> str:
    return failure_message(next(e for e in result.all_events if e.is_step_failure).step_failure_data)


def test_main_command_twice_at_once_the_second_is_refused_naming_the_first(sample_release, tmp_path):
    settings = make_settings(tmp_path / "data", None, source="sample", sample_dir=sample_release)
    env = build_env(settings, tmp_path / "dagster_home")
    command = [sys.executable, "-m", "ilsvrc_assets.cli", "build", "--log-level", "WARNING"]
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    builds = [
        subprocess.Popen(
            command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )
        for log in logs
    ]
    # Whichever took the lock keeps building; the other stops at once with exit status 3.
    deadline = time.monotonic() + 120
    while all(b.poll() is None for b in builds):
        assert time.monotonic() < deadline, "neither build was refused"
        time.sleep(0.05)
    loser = next(i for i, b in enumerate(builds) if b.poll() is not None)
    winner = builds[1 - loser]
    assert builds[loser].returncode == EXIT_BUSY, logs[loser].read_text()
    message = logs[loser].read_text()
    assert (
        f"not started: the build of {settings.data_dir} is in use by another run (pid {winner.pid}" in message
    )
    assert "wait for it to finish" in message
    assert winner.poll() is None, "the first build must go on undisturbed"
    kill_when(winner, lambda: True, timeout=5, log=logs[1 - loser])  # enough: it was not disturbed


def test_a_run_of_a_shard_another_run_is_writing_is_refused_and_nothing_is_lost(built_graph_copy):
    settings, instance = built_graph_copy
    name = settings.shard_names("validation")[2]
    published = settings.tfrecords_dir / name
    original = published.read_bytes()
    written = versions.working(settings, "tfrecords")  # the version the runs write (not published)
    shard = written / name
    lock = settings.lock_path(f"shards/{name}")
    shard.unlink()
    try:
        with fileio.exclusive(lock, "a run in this test"):  # as another run writing this shard would
            result = run_job(settings, instance, JOB_NAMES["validation"], tags={"dagster/partition": name})
            assert not result.success
            message = _step_failure(result)
            assert f"{name}: shard {name} is in use by another run (pid {os.getpid()}" in message
            assert not shard.exists() and temp_files(written) == []
        # Once the other run is done, the same run goes through.
        result = run_job(settings, instance, JOB_NAMES["validation"], tags={"dagster/partition": name})
        assert result.success
        assert shard.read_bytes() == original
    finally:
        discard_unpublished(settings, "tfrecords")
    assert published.read_bytes() == original  # readers saw none of it


RUN_SHARDS = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from dagster import DagsterInstance
    from dagster._core.instance.ref import InstanceRef
    from ilsvrc_assets.cli import failure_message
    from ilsvrc_assets.definitions import JOB_NAMES, build_definitions
    from ilsvrc_assets_tests.helpers import make_settings

    data, sample, home, first, last = sys.argv[1:]
    settings = make_settings(Path(data), None, source="sample", sample_dir=Path(sample))
    job = build_definitions(settings).resolve_job_def(JOB_NAMES["validation"])
    with DagsterInstance.from_ref(InstanceRef.from_dir(home)) as instance:
        tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
        result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    for event in result.all_events:
        if event.is_step_failure:
            print("FAILED:", failure_message(event.step_failure_data))
    sys.exit(0 if result.success else 1)
    """
)


def test_two_runs_of_the_same_partitions_at_once_never_corrupt_a_shard(built_graph_copy, tmp_path):
    settings, instance = built_graph_copy
    names = settings.shard_names("validation")
    originals = {name: (settings.tfrecords_dir / name).read_bytes() for name in names}
    written = versions.working(settings, "tfrecords")  # the version the runs write (not published)
    for name in names:
        (written / name).unlink()
    try:
        args = [
            str(settings.data_dir),
            str(settings.sample_dir),
            instance.root_directory,
            names[0],
            names[-1],
        ]
        runs = [
            subprocess.Popen(
                [sys.executable, "-c", RUN_SHARDS, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [run.communicate(timeout=300)[0] for run in runs]
        for run, output in zip(runs, outputs):
            # Each run either wrote (or found written) every shard, or stopped at one the other
            # run was writing, saying so.
            assert run.returncode == 0 or "is in use by another run" in output, output[-3000:]
        # Whatever happened, a shard on disk is a whole, correct shard, and nothing temporary is left.
        for name in names:
            shard = written / name
            assert not shard.exists() or shard.read_bytes() == originals[name], name
        assert temp_files(written) == []
        # And a run afterwards completes the range.
        tags = {ASSET_PARTITION_RANGE_START_TAG: names[0], ASSET_PARTITION_RANGE_END_TAG: names[-1]}
        assert run_job(settings, instance, JOB_NAMES["validation"], tags=tags).success
        for name in names:
            assert (written / name).read_bytes() == originals[name]
    finally:
        discard_unpublished(settings, "tfrecords")
    for name in names:  # readers saw none of it
        assert (settings.tfrecords_dir / name).read_bytes() == originals[name]


def test_the_validation_tree_is_never_written_by_two_runs_at_once(built_graph_copy):
    settings, instance = built_graph_copy
    lock = settings.lock_path("validation_tree")
    before = sorted(p.name for p in settings.validation_dir.rglob("*.JPEG"))
    with fileio.exclusive(lock, "a run in this test"):
        result = run_job(settings, instance, JOB_NAMES["inputs"], ["validation_tree"])
    assert not result.success
    assert (
        f"validation_tree in {settings.data_dir} is in use by another run (pid {os.getpid()}"
        in _step_failure(result)
    )
    assert sorted(p.name for p in settings.validation_dir.rglob("*.JPEG")) == before
