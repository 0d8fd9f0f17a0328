"""Every blocking input check made to fail by a damaged release, and what it blocks downstream.

Each case derives a variant of the built-in sample with one archive damaged (the rest are
symlinks), runs the graph on it and asserts on the check evaluation and on what did not run.
The checks on outputs (validation tree, manifest) are made to fail in test_graph.py, against
the built graph.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from dagster import DagsterInstance

from ilsvrc_assets import release
from ilsvrc_assets.cli import failure_message
from ilsvrc_assets.definitions import JOB_NAMES
from ilsvrc_assets_tests.helpers import (
    build_all,
    evaluations,
    materialized,
    rewrite_tar,
    run_job,
    variant_release,
)

INPUTS = JOB_NAMES["inputs"]


@pytest.fixture
def instance(tmp_path):
    (tmp_path / "dagster_home").mkdir()
    with DagsterInstance.local_temp(str(tmp_path / "dagster_home")) as instance:
        yield instance


def _failed(result, name):
    found = evaluations(result)
    assert name in found, f"{name} was not evaluated; evaluated: {sorted(found)}"
    assert not found[name].passed
    return found[name].description


def _edit_devkit_member(member_name, edit):
    def write(original: Path, target: Path) -> None:
        def edit_member(info, data):
            if info.name.removeprefix("./") == member_name:
                return [(info, edit(data))]
            return [(info, data)]

        rewrite_tar(original, target, edit_member, compressed=True)

    return write


def test_corrupt_archive_fails_its_checksum_and_blocks_everything_downstream(
    sample_release, tmp_path, settings_for, instance
):
    def corrupt(original: Path, target: Path) -> None:
        data = bytearray(original.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))

    folder = variant_release(sample_release, tmp_path / "release", update_md5sums=False, devkit=corrupt)
    settings = settings_for(folder)
    result = run_job(settings, instance, INPUTS, ["devkit_archive", "synsets", "validation_labels"])
    description = _failed(result, "devkit_archive:checksum")
    assert release.DEVKIT.name in description and "delete it" in description
    assert materialized(result) == {"devkit_archive"}  # recorded, with its MD5, but nothing downstream
    assert not settings.synsets_csv.exists()


def test_truncated_archive_is_a_checksum_failure_naming_the_file(
    sample_release, tmp_path, settings_for, instance
):
    def truncate(original: Path, target: Path) -> None:
        with open(original, "rb") as f:
            target.write_bytes(f.read(original.stat().st_size // 3))

    folder = variant_release(sample_release, tmp_path / "release", update_md5sums=False, img_val=truncate)
    settings = settings_for(folder)
    result = run_job(
        settings,
        instance,
        INPUTS,
        [
            "validation_archive",
            "devkit_archive",
            "synsets",
            "validation_labels",
            "validation_images",
            "validation_tree",
        ],
    )
    assert release.IMG_VAL.name in _failed(result, "validation_archive:checksum")
    assert "validation_images" not in materialized(result) and "validation_tree" not in materialized(result)


def test_synset_list_that_disagrees_fails_and_blocks_the_indexes(
    sample_release, tmp_path, settings_for, instance
):
    def replace_a_leaf(data: bytes) -> bytes:
        mat = scipy.io.loadmat(io.BytesIO(data))
        synsets = mat["synsets"]
        for i in range(synsets.shape[0]):
            if int(synsets[i, 0]["num_children"].squeeze()) == 0:
                synsets[i, 0]["WNID"] = np.array(["n99999999"])
                break
        out = io.BytesIO()
        scipy.io.savemat(out, {"synsets": synsets})
        return out.getvalue()

    folder = variant_release(
        sample_release,
        tmp_path / "release",
        devkit=_edit_devkit_member(release.DEVKIT_META_MAT, replace_a_leaf),
    )
    settings = settings_for(folder)
    result = run_job(
        settings,
        instance,
        INPUTS,
        ["devkit_archive", "synsets", "validation_labels", "train_archive", "train_images"],
    )
    description = _failed(result, "synsets:one_thousand_synsets")
    assert "n99999999" in description or "not in the shipped synset list" in description
    assert "validation_labels" not in materialized(result)
    assert "train_images" not in materialized(result)


def test_ground_truth_that_disagrees_with_the_label_file_blocks_the_validation_index(
    sample_release, tmp_path, settings_for, instance
):
    labels = release.validation_synsets()
    other = next(i for i in range(2, 100) if labels[i - 1] != labels[0])

    def swap_lines(data: bytes) -> bytes:
        lines = data.decode().splitlines()
        lines[0], lines[other - 1] = lines[other - 1], lines[0]
        return ("\n".join(lines) + "\n").encode()

    folder = variant_release(
        sample_release,
        tmp_path / "release",
        devkit=_edit_devkit_member(release.DEVKIT_VALIDATION_GROUND_TRUTH, swap_lines),
    )
    settings = settings_for(folder)
    result = run_job(
        settings,
        instance,
        INPUTS,
        ["devkit_archive", "synsets", "validation_labels", "validation_archive", "validation_images"],
    )
    description = _failed(result, "validation_labels:agrees_with_shipped_labels")
    assert release.validation_filename(1) in description
    assert "validation_images" not in materialized(result)


def test_missing_validation_image_fails_fifty_per_synset_and_blocks_the_tree(
    sample_release, tmp_path, settings_for, instance
):
    missing = release.validation_filename(7)

    def drop_one(original: Path, target: Path) -> None:
        rewrite_tar(
            original, target, lambda info, data: [] if info.name.endswith(missing) else [(info, data)]
        )

    folder = variant_release(sample_release, tmp_path / "release", img_val=drop_one)
    settings = settings_for(folder)
    result = run_job(
        settings,
        instance,
        INPUTS,
        [
            "devkit_archive",
            "synsets",
            "validation_labels",
            "validation_archive",
            "validation_images",
            "validation_tree",
        ],
    )
    description = _failed(result, "validation_images:fifty_per_synset")
    assert missing in description and "49,999" in description
    assert "validation_tree" not in materialized(result)
    assert not settings.validation_dir.exists()


def test_missing_synset_in_the_train_archive_fails_and_the_shards_refuse_to_run(
    sample_release, tmp_path, settings_for, instance
):
    gone = "n01440764"

    def drop_synset(original: Path, target: Path) -> None:
        rewrite_tar(
            original, target, lambda info, data: [] if info.name.endswith(f"{gone}.tar") else [(info, data)]
        )

    folder = variant_release(sample_release, tmp_path / "release", img_train=drop_synset)
    settings = settings_for(folder)
    result = run_job(
        settings, instance, INPUTS, ["devkit_archive", "synsets", "train_archive", "train_images"]
    )
    assert gone in _failed(result, "train_images:every_synset_has_training_images")
    # The shards run in a run of their own; they refuse while an upstream blocking check has failed.
    keys = settings.shard_names("train")
    shards = run_job(
        settings,
        instance,
        JOB_NAMES["train"],
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
    )
    assert not shards.success
    failure = next(e for e in shards.all_events if e.is_step_failure)
    assert "every_synset_has_training_images" in failure_message(failure.step_failure_data)
    assert not any(settings.tfrecords_dir.glob("train-*")) if settings.tfrecords_dir.exists() else True


def test_box_on_an_unknown_image_fails_boxes_are_valid(sample_release, tmp_path, settings_for, instance):
    xml = (
        "<annotation><folder>n01440764</folder><filename>n01440764_999999</filename>"
        "<size><width>40</width><height>30</height><depth>3</depth></size>"
        "<object><name>n01440764</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>20</xmax><ymax>25</ymax></bndbox></object>"
        "</annotation>"
    ).encode()

    def add_box(original: Path, target: Path) -> None:
        import tarfile

        first = [True]

        def edit(info, data):
            members = [(info, data)]
            if first[0]:
                first[0] = False
                extra = tarfile.TarInfo("n01440764/n01440764_999999.xml")
                members.append((extra, xml))
            return members

        rewrite_tar(original, target, edit, compressed=True)

    folder = variant_release(sample_release, tmp_path / "release", bbox_train=add_box)
    settings = settings_for(folder)
    result = run_job(settings, instance, INPUTS)
    description = _failed(result, "bounding_boxes:boxes_are_valid")
    assert "n01440764_999999.JPEG" in description
    other = {n: e for n, e in evaluations(result).items() if n != "bounding_boxes:boxes_are_valid"}
    assert all(e.passed for e in other.values())


def test_build_stops_at_the_first_failed_stage(sample_release, tmp_path, settings_for, instance):
    def corrupt(original: Path, target: Path) -> None:
        target.write_bytes(gzip.compress(b"not the devkit"))

    folder = variant_release(sample_release, tmp_path / "release", update_md5sums=False, devkit=corrupt)
    results, failed = build_all(settings_for(folder), instance)
    assert len(results) == 1 and not results[0].success
    assert failed[0].startswith("check devkit_archive:checksum: ILSVRC2012_devkit_t12.tar.gz: MD5"), failed


def test_empty_box_archive_fails_boxes_are_valid(sample_release, tmp_path, settings_for, instance):
    def empty(original: Path, target: Path) -> None:
        rewrite_tar(original, target, lambda info, data: [], compressed=True)

    folder = variant_release(sample_release, tmp_path / "release", bbox_val=empty)
    settings = settings_for(folder)
    assets = [
        "devkit_archive",
        "synsets",
        "validation_labels",
        "train_archive",
        "train_images",
        "validation_archive",
        "validation_images",  # the box table's contact sheet draws on the images of both splits
        "train_boxes_archive",
        "validation_boxes_archive",
        "bounding_boxes",
    ]
    result = run_job(settings, instance, INPUTS, assets)
    assert "no kept validation boxes" in _failed(result, "bounding_boxes:boxes_are_valid")
