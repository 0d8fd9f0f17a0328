"""``ILSVRC_SOURCE=folder``: the sample as an extracted copy gives the official build's outputs (apart
from the boxes it lacks, or byte for byte with ``ILSVRC_BOXES_DIR``); a sorted ``val/`` reads as a
flat one; a hand-written copy passes an independent check of every record; bad copies fail naming
the file."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from ilsvrc_assets import archives, bounding_boxes, fileio, image_index, release, shards, synsets, versions
from ilsvrc_assets.record_workers import RecordWorkers
from ilsvrc_assets.sample import folder as folder_layout
from ilsvrc_assets.sources import SourceError, folder
from ilsvrc_assets_tests.helpers import (
    BOX_KEYS,
    assert_synsets_as_official_but_the_devkit_ids,
    build_in_new_instance,
    build_plainly,
    check_records,
    evaluations,
    golden_values,
    make_settings,
    read_examples,
    shard_md5s,
    temp_files,
    tiny_images,
    tree_digest,
    write_folder_copy,
)

pytestmark = pytest.mark.long(seconds=180)  # conftest: the long files start first


def say(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def folder_copy(sample_release, tmp_path_factory) -> Path:
    """The sample extracted: train/<wnid>/ and a flat val/."""
    return folder_layout.write_layout(sample_release, tmp_path_factory.mktemp("folder") / "imagenet", say)


@pytest.fixture(scope="module")
def folder_build(folder_copy, tmp_path_factory):
    """The whole graph built from the folder, without boxes, once for the module."""
    return build_in_new_instance(tmp_path_factory.mktemp("folder-build"), folder_copy, "folder")


def test_without_boxes_the_box_check_warns_and_the_build_goes_on(folder_build):
    settings, results, failed = folder_build
    assert failed == []  # a warning is not a failure
    checks = evaluations(*results)
    boxes = checks["bounding_boxes:boxes_are_valid"]
    assert not boxes.passed and boxes.severity.value == "WARN"
    assert "no boxes in this source" in boxes.description
    others = {name: e for name, e in checks.items() if name != "bounding_boxes:boxes_are_valid"}
    assert {"train_folder:checksum", "validation_folder:checksum"} <= set(others)
    assert all(e.passed for e in others.values()), [n for n, e in others.items() if not e.passed]
    assert bounding_boxes.read_table(settings.bounding_boxes_parquet).empty


def test_synsets_labels_and_validation_tree_are_the_official_builds(folder_build, sample_release):
    settings, _, _ = folder_build
    golden = golden_values()
    name = "validation_labels.csv"
    assert fileio.md5_file(settings.data_dir / name) == golden["files"][name], name
    assert_synsets_as_official_but_the_devkit_ids(settings.synsets_csv, sample_release)
    assert tree_digest(settings.validation_dir) == (
        golden["validation_tree"]["digest"],
        golden["validation_tree"]["files"],
    )


@pytest.fixture(scope="module")
def with_boxes(folder_build, sample_release, tmp_path_factory):
    """The same copy with ILSVRC_BOXES_DIR at the sample's official box archives: the box table and
    the shards made again on top of the build's other outputs (plain stages)."""
    settings, _, _ = folder_build
    data = tmp_path_factory.mktemp("folder-boxes") / "data"
    shutil.copytree(
        settings.data_dir,
        data,
        ignore=shutil.ignore_patterns("tfrecords*", ".state", "validation", versions.VERSIONS),
    )
    boxed = make_settings(data, settings.local_dir, source="folder", boxes_dir=sample_release)
    source = folder.FolderSource(settings.local_dir, sample_release)
    assert [i.asset for i in source.inputs()][2:] == ["train_boxes_archive", "validation_boxes_archive"]
    bounding_boxes.make_bounding_boxes(boxed, source)
    with RecordWorkers(2) as workers:
        for split in release.SPLITS:
            shards.write_split_shards(boxed, split, source, workers)
    versions.make_published(boxed, "tfrecords")
    return boxed


def test_with_the_box_archives_the_shards_are_the_official_builds_byte_for_byte(with_boxes):
    assert bounding_boxes.bounding_boxes_verdict(with_boxes, has_boxes=True).passed
    assert shard_md5s(with_boxes) == golden_values()["shards"]


def test_without_boxes_the_records_differ_from_the_official_only_in_their_boxes(folder_build, with_boxes):
    settings, _, _ = folder_build
    for split in release.SPLITS:
        bare, boxed = (
            read_examples(settings.tfrecords_dir, split),
            read_examples(with_boxes.tfrecords_dir, split),
        )
        assert bare.keys() == boxed.keys()
        for name, record in bare.items():
            assert all(record[f"image/object/bbox/{key}"] == () for key in BOX_KEYS), name
            same = {k: v for k, v in boxed[name].items() if not k.startswith("image/object/bbox/")}
            assert {k: v for k, v in record.items() if not k.startswith("image/object/bbox/")} == same


def test_observation_sees_a_file_touched(folder_copy):
    source = folder.FolderSource(folder_copy)
    train, _ = source.inputs()
    first = source.observe(train, say)
    assert source.observe(train, say) == first
    image = next((folder_copy / "train" / "n01440764").iterdir())
    stat = image.stat()
    image.touch()
    try:
        assert source.observe(train, say) != first
    finally:
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source.observe(train, say) == first


def test_a_sorted_val_folder_reads_as_the_flat_one(folder_copy, sample_release, tmp_path):
    labels = list(release.validation_synsets())
    shutil.copytree(folder_copy / "train", tmp_path / "sorted" / "train", copy_function=os.link)
    for number, wnid in enumerate(labels, start=1):
        name = release.validation_filename(number)
        (tmp_path / "sorted" / "val" / wnid).mkdir(parents=True, exist_ok=True)
        os.link(folder_copy / "val" / name, tmp_path / "sorted" / "val" / wnid / name)
    flat, sorted_ = folder.FolderSource(folder_copy), folder.FolderSource(tmp_path / "sorted")
    kit = sorted_.read_devkit(say)
    assert synsets.validation_labels(kit, kit.leaves) == labels
    a = flat.index_images("validation", (), labels, say).sort_values("number", ignore_index=True)
    b = sorted_.index_images("validation", (), labels, say).sort_values("number", ignore_index=True)
    assert a.equals(b)
    with (
        flat.image_reader("validation", say).open() as x,
        sorted_.image_reader("validation", say).open() as y,
    ):
        for row in a.head(200).itertuples():
            assert x.read(row.filename, row.offset, row.size) == y.read(row.filename, row.offset, row.size)


# --- A copy written by hand, and bad copies ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return tiny_images(list(release.challenge_synsets()))


def test_a_hand_written_copy_with_a_flat_val_passes_an_independent_check_of_every_record(tmp_path, tiny):
    # Flat: the labels are the shipped file's, so the three validation images carry those.
    shipped = release.validation_synsets()
    images_ = [
        i if i.split == "train" else replace(i, synset=shipped[release.validation_number(i.filename) - 1])
        for i in tiny
    ]
    root = write_folder_copy(tmp_path / "copy", images_)
    settings = make_settings(
        tmp_path / "data", root, source="folder", num_shards={"train": 2, "validation": 1}
    )
    build_plainly(settings, folder.FolderSource(root))
    check_records(settings.tfrecords_dir, images_)


def test_a_missing_class_folder_is_refused_naming_it(tmp_path, tiny):
    root = write_folder_copy(tmp_path, [i for i in tiny if i.synset != "n01440764" or i.split != "train"])
    with pytest.raises(archives.ArchiveError, match=rf"no {tmp_path}/train/n01440764"):
        folder.FolderSource(root).index_images("train", release.challenge_synsets(), (), say)


def test_a_duplicate_image_is_refused_naming_it(tmp_path, tiny):
    root = write_folder_copy(tmp_path, tiny, sorted_val=True)
    twice = root / "val" / "n01443537" / tiny[-3].filename  # also in its own label's folder
    twice.write_bytes(tiny[-3].data)
    with pytest.raises(archives.ArchiveError, match=rf"{twice}: image .* appears twice"):
        folder.FolderSource(root).read_devkit(say)


def test_a_stray_file_and_a_link_leaving_the_folder_are_refused(tmp_path, tiny):
    root = write_folder_copy(tmp_path / "copy", tiny)
    (root / "val" / "notes.txt").write_text("x")
    with pytest.raises(archives.ArchiveError, match=rf"{root}/val/notes.txt: not a validation image"):
        folder.FolderSource(root).index_images("validation", (), list(release.validation_synsets()), say)
    (root / "val" / "notes.txt").unlink()
    (tmp_path / "outside.JPEG").write_bytes(tiny[0].data)
    link = root / "train" / "n01440764" / "n01440764_999.JPEG"
    link.symlink_to(tmp_path / "outside.JPEG")
    with pytest.raises(SourceError, match=rf"{link}: a link to .*outside the copy's folder"):
        folder.FolderSource(root).index_images("train", release.challenge_synsets(), (), say)


def test_a_truncated_image_fails_its_shard_naming_the_file_and_leaves_no_shard(tmp_path, tiny):
    root = write_folder_copy(tmp_path / "copy", tiny)
    settings = make_settings(
        tmp_path / "data", root, source="folder", num_shards={"train": 1, "validation": 1}
    )
    source = folder.FolderSource(root)
    synsets.make_synsets(settings, source)
    bounding_boxes.write_outputs(
        bounding_boxes.empty_table(), settings.bounding_boxes_parquet, settings.bounding_boxes_csv
    )
    victim = root / "train" / tiny[0].synset / tiny[0].filename  # an RGB JPEG: kept as is, so checked
    victim.write_bytes(tiny[0].data[: len(tiny[0].data) // 2])
    image_index.make_train_images(settings, source)  # indexed as it is now: the bytes are cut short
    with (
        RecordWorkers(1) as workers,
        pytest.raises(Exception, match=rf"{root / 'train'} member {tiny[0].filename}"),
    ):
        shards.write_split_shards(settings, "train", source, workers)
    written = versions.judged(settings, "tfrecords")  # the version the stage wrote into
    assert written.is_dir() and not (written / settings.shard_names("train")[0]).exists()
    assert temp_files(written) == []
    assert not settings.tfrecords_dir.exists()  # nothing published
