"""Disk full: a small tmpfs as <data>. A clear error naming the step and the space it needs, nothing
partial left, and the run succeeds once space is freed (the tmpfs is grown)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from dagster import DagsterInstance

from ilsvrc_assets import archives, bounding_boxes, fileio, shard_plan, shards, synsets, versions
from ilsvrc_assets.cli import failure_message
from ilsvrc_assets.definitions import JOB_NAMES
from ilsvrc_assets.formats.tfrecord import FORMAT as TFRECORD
from ilsvrc_assets.record_workers import RecordWorkers
from ilsvrc_assets.sources.official import ArchiveReader
from ilsvrc_assets_tests.helpers import (
    TEST_SHARDS,
    differing,
    evaluations,
    final_files,
    make_settings,
    run_job,
    temp_files,
)

MB = 1024 * 1024


class SmallDisk:
    """A tmpfs mounted at ``path`` whose size the test can change (``mount -o remount``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def resize(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    path = tmp_path / "disk"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={4 * MB}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if mounted.returncode != 0:  # CI runs as root; elsewhere mounting may not be allowed
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_validation_tree_on_a_full_disk_says_how_much_it_needs_then_finishes(
    small_disk, sample_release, built_sample_graph, tmp_path
):
    reference = built_sample_graph[0]
    small_disk.resize(40 * MB)  # room for the indexes and the box table, not for 50,000 images
    settings = make_settings(small_disk.path / "data", None, source="sample", sample_dir=sample_release)
    assets = ["validation_archive", "devkit_archive", "synsets", "validation_labels", "validation_images"]
    (tmp_path / "home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        assert run_job(settings, instance, JOB_NAMES["inputs"], assets).success
        failed = run_job(settings, instance, JOB_NAMES["inputs"], ["validation_tree"])
        assert not failed.success
        failure = next(e for e in failed.all_events if e.is_step_failure)
        message = failure_message(failure.step_failure_data)
        assert failure.step_key == "validation_tree"
        assert "the validation tree (50,000 images to write) needs about" in message
        written = versions.judged(settings, "validation")  # the version being written
        assert str(written) in message and "free up" in message
        # Refused before writing anything: no image, no temporary file.
        assert not written.exists() or final_files(written) == {}
        assert temp_files(small_disk.path) == []

        small_disk.resize(400 * MB)  # space freed
        again = run_job(settings, instance, JOB_NAMES["inputs"], ["validation_tree"])
        assert again.success
        assert evaluations(again)["validation_tree:matches_validation_label_file"].passed
    assert differing(written, reference.validation_dir) == []


def _validation_job(reference, out_dir: Path, name: str) -> shard_plan.ShardJob:
    """The job of one validation shard of the clean build's plan, writing into ``out_dir``."""
    table = bounding_boxes.read_table(reference.bounding_boxes_parquet)
    jobs = shard_plan.plan_split(
        "validation",
        archives.read_index(reference.image_index("validation")),
        synsets.read_synsets(reference.synsets_csv),
        bounding_boxes.boxes_by_image(table[table["split"] == "validation"]),
        ArchiveReader(reference.sample_dir / "ILSVRC2012_img_val.tar"),
        out_dir,
        TEST_SHARDS["validation"],
        wanted=[name],
    )
    return jobs[name]


def test_shards_on_a_full_disk_are_refused_up_front_then_written_after_space_is_freed(
    small_disk, built_sample_graph
):
    reference = built_sample_graph[0]
    name = reference.shard_names("validation")[1]
    job = _validation_job(reference, small_disk.path / "tfrecords", name)
    with pytest.raises(fileio.DiskFullError) as caught:
        shards.write_shards(
            [job], TFRECORD, RecordWorkers(1, eager=False)
        )  # refused before any worker starts
    message = str(caught.value)
    assert f"writing 1 shard ({name} ...) needs about" in message
    assert "MB" in message and "free up" in message and str(small_disk.path / "tfrecords") in message
    assert final_files(small_disk.path) == {}

    small_disk.resize(64 * MB)
    with RecordWorkers(1) as workers:
        [stats] = shards.write_shards([job], TFRECORD, workers)
    assert stats.path.read_bytes() == (reference.tfrecords_dir / name).read_bytes()


def test_disk_filling_up_mid_write_leaves_nothing_partial(small_disk, built_sample_graph):
    reference = built_sample_graph[0]
    # A file bigger than the disk, written past any check up front (as when another program
    # fills the disk meanwhile): the error names the file, and no partial file remains.
    target = small_disk.path / "big.bin"
    with pytest.raises(fileio.DiskFullError, match=f"no space left on the device writing {target}"):
        fileio.atomic_write_bytes(target, b"x" * (8 * MB))
    assert list(small_disk.path.iterdir()) == []

    # The same inside TensorFlow's record writer, mid-shard.
    name = reference.shard_names("validation")[0]
    job = _validation_job(reference, small_disk.path / "tfrecords", name)
    with pytest.raises(shards.ShardError) as caught:
        shards.write_shard(job, TFRECORD)
    assert str(caught.value).startswith(f"{name}: no space left on the device writing")
    assert final_files(small_disk.path) == {} and temp_files(small_disk.path) == []
