"""The refresh sensor and the audit schedule, evaluated in process against real instances.

Unchanged sources: no run requested. A changed archive: one backfill of that archive and exactly
what is downstream of it, every shard partition included; nothing else.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    build_schedule_context,
    build_sensor_context,
)
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.utils import make_new_backfill_id

from ilsvrc_assets import release
from ilsvrc_assets import settings as settings_module
from ilsvrc_assets.definitions import JOB_NAMES, build_definitions
from ilsvrc_assets.defs.outputs import unbuilt_assets
from ilsvrc_assets.defs.resources import resources_for
from ilsvrc_assets.defs.schedules import AUDIT, CHANGED_TAG, REFRESH
from ilsvrc_assets_tests.helpers import copy_file, make_settings, materialized, run_job, variant_release

ARCHIVE_ASSETS = [
    "train_archive",
    "validation_archive",
    "devkit_archive",
    "train_boxes_archive",
    "validation_boxes_archive",
]


def _evaluate(settings, instance, cursor=None):
    definitions = build_definitions(settings)
    sensor = definitions.resolve_sensor_def(REFRESH)
    return sensor.evaluate_tick(
        build_sensor_context(
            instance=instance, cursor=cursor, definitions=definitions, resources=resources_for(settings)
        )
    )


def _requested(data) -> tuple[set[str], dict[str, set[str]]]:
    """(unpartitioned asset names, {partitioned asset name: partition keys}) of the one backfill request."""
    (request,) = data.run_requests
    subset = request.asset_graph_subset
    assert subset is not None, "the refresh launches a backfill"
    partitioned = {
        key.to_user_string(): set(partitions.get_partition_keys())
        for key, partitions in subset.partitions_subsets_by_asset_key.items()
    }
    return {k.to_user_string() for k in subset.non_partitioned_asset_keys}, partitioned


def test_unchanged_sample_source_requests_nothing(built_sample_graph):
    settings, instance, _, _ = built_sample_graph
    first = _evaluate(settings, instance)
    assert first.run_requests == []
    assert "no archive changed" in first.skip_message
    assert "built-in sample v" in first.skip_message and "train_archive" in first.skip_message
    # Until the next cron tick, a wake-up of the sensor observes nothing at all.
    again = _evaluate(settings, instance, cursor=first.cursor)
    assert again.run_requests == [] and again.skip_message.startswith("next observation at")
    assert again.cursor is None or again.cursor == first.cursor
    # A cursor from before the latest tick means a tick has passed: observe again.
    older = json.dumps({"tick": json.loads(first.cursor)["tick"] - 7 * 24 * 3600})
    assert "no archive changed" in _evaluate(settings, instance, cursor=older).skip_message


@pytest.fixture
def local_release(sample_release, tmp_path):
    """A local-folder release whose archives are real copies (so they can be touched), its
    settings, and a fresh instance in which only the five archive assets were materialised."""
    replace = {archive.key: copy_file for archive in release.ARCHIVES}
    folder = variant_release(sample_release, tmp_path / "release", **replace)
    settings = make_settings(tmp_path / "data", folder)
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        result = run_job(settings, instance, JOB_NAMES["inputs"], ARCHIVE_ASSETS)
        assert result.success and materialized(result) == set(ARCHIVE_ASSETS)
        yield folder, settings, instance


def _touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


@pytest.mark.parametrize(
    "archive, expected_unpartitioned, expected_shards",
    [
        # The training boxes reach both splits' shards through the box table, not the validation tree.
        (
            release.BBOX_TRAIN,
            {"train_boxes_archive", "bounding_boxes"},
            {"train_shards", "validation_shards"},
        ),
        # The validation images also reach the box table's contact sheet (a preview drawn on them),
        # and through it both splits' shards (unchanged shards are not written again: the ledger).
        (
            release.IMG_VAL,
            {"validation_archive", "validation_images", "validation_tree", "bounding_boxes"},
            {"train_shards", "validation_shards"},
        ),
    ],
)
def test_changed_archive_requests_it_and_exactly_what_is_downstream(
    local_release, archive, expected_unpartitioned, expected_shards
):
    folder, settings, instance = local_release
    unchanged = _evaluate(settings, instance)
    assert unchanged.run_requests == [] and "no archive changed" in unchanged.skip_message
    assert f"local folder {folder}" in unchanged.skip_message

    _touch(folder / archive.name)
    changed = _evaluate(settings, instance)
    unpartitioned, partitioned = _requested(changed)
    published = {"published_tfrecords"} | (
        {"published_validation_tree"} if "validation_tree" in expected_unpartitioned else set()
    )
    assert unpartitioned == expected_unpartitioned | {"dataset_manifest"} | published
    assert set(partitioned) == expected_shards
    for split in ("train", "validation"):
        if f"{split}_shards" in partitioned:  # every partition, as one backfill
            assert partitioned[f"{split}_shards"] == set(settings.shard_names(split))
    assert "synsets" not in unpartitioned and "devkit_archive" not in unpartitioned
    (request,) = changed.run_requests
    name = next(iter(expected_unpartitioned & set(ARCHIVE_ASSETS)))
    assert request.tags[CHANGED_TAG] == name


def test_requested_backfill_blocks_a_second_one_until_its_archive_is_materialised(local_release):
    folder, settings, instance = local_release
    _touch(folder / release.BBOX_TRAIN.name)
    data = _evaluate(settings, instance)
    (request,) = data.run_requests
    # What the sensor daemon does with the request: a backfill in the instance.
    backfill = PartitionBackfill.from_asset_graph_subset(
        backfill_id=make_new_backfill_id(),
        backfill_timestamp=time.time(),
        tags=request.tags,
        dynamic_partitions_store=instance,
        asset_graph_subset=request.asset_graph_subset,
        title=None,
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    waiting = _evaluate(settings, instance)
    assert waiting.run_requests == []
    assert f"{backfill.backfill_id} is still in progress" in waiting.skip_message
    assert waiting.cursor is None  # looked at again at the next wake-up

    instance.update_backfill(backfill.with_status(BulkActionStatus.COMPLETED_SUCCESS))
    result = run_job(settings, instance, JOB_NAMES["inputs"], ["train_boxes_archive"])
    assert result.success
    latest = instance.get_latest_materialization_event(AssetKey("train_boxes_archive"))
    source_version = latest.asset_materialization.metadata["source_version"].value
    assert source_version.startswith(f"size={(folder / release.BBOX_TRAIN.name).stat().st_size} ")
    after = _evaluate(settings, instance)
    assert after.run_requests == [] and "no archive changed" in after.skip_message


@pytest.mark.parametrize("every_format", [False, True])
def test_archive_never_materialised_counts_as_changed(sample_release, tmp_path, every_format):
    formats = settings_module.FORMATS if every_format else settings_module.DEFAULT_FORMATS  # ILSVRC_FORMATS
    settings = make_settings(tmp_path / "data", sample_release, formats=formats)
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        unpartitioned, partitioned = _requested(_evaluate(settings, instance))
    definitions = build_definitions(settings)
    everything = {key.to_user_string() for key in definitions.resolve_asset_graph().get_all_asset_keys()}
    # The assets of the formats not chosen (the WebDataset tars, the training tree) are never requested.
    assert unpartitioned | set(partitioned) == everything - set(unbuilt_assets(settings))
    assert every_format or {"train_tree", "webdataset_manifest"} <= set(unbuilt_assets(settings))


def test_crons_timezone_and_status_come_from_the_settings(built_sample_graph):
    settings, instance, _, _ = built_sample_graph
    definitions = build_definitions(settings)
    audit = definitions.resolve_schedule_def(AUDIT)
    assert audit.cron_schedule == "0 5 * * *" and audit.job_name == JOB_NAMES["audit"]
    assert audit.default_status == DefaultScheduleStatus.STOPPED
    assert definitions.resolve_sensor_def(REFRESH).default_status == DefaultSensorStatus.STOPPED
    # A tick of the audit schedule asks for one run of the audit job.
    tick = audit.evaluate_tick(build_schedule_context(instance=instance))
    assert len(tick.run_requests) == 1 and not tick.skip_message

    env = {
        "ILSVRC_DATA_DIR": str(settings.data_dir),
        "ILSVRC_REFRESH_CRON": "30 1 * * 1",
        "ILSVRC_AUDIT_CRON": "15 2 * * *",
        "ILSVRC_SCHEDULE_TIMEZONE": "Europe/Paris",
        "ILSVRC_SCHEDULES": "running",
    }
    configured = build_definitions(settings_module.load(env))
    audit = configured.resolve_schedule_def(AUDIT)
    assert (audit.cron_schedule, audit.execution_timezone) == ("15 2 * * *", "Europe/Paris")
    assert audit.default_status == DefaultScheduleStatus.RUNNING
    refresh = configured.resolve_sensor_def(REFRESH)
    assert refresh.default_status == DefaultSensorStatus.RUNNING and "`30 1 * * 1`" in refresh.description
    # Between ticks the sensor names the next one: Monday 01:30 in Paris.
    future = json.dumps({"tick": time.time() + 3600})
    waiting = refresh.evaluate_tick(
        build_sensor_context(
            instance=instance, cursor=future, definitions=configured, resources=resources_for(settings)
        )
    )
    upcoming = datetime.fromisoformat(waiting.skip_message.split(" at ")[1].split(" (")[0])
    assert (upcoming.weekday(), upcoming.hour, upcoming.minute) == (0, 1, 30)
    assert upcoming.utcoffset() in (timedelta(hours=1), timedelta(hours=2))
    for name, value in (("ILSVRC_AUDIT_CRON", "every day"), ("ILSVRC_SCHEDULES", "on")):
        with pytest.raises(settings_module.SettingsError, match=name):
            settings_module.load({**env, name: value})
