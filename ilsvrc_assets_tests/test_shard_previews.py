"""The shard previews, drawn from a validation shard of the built-in sample written by the shard
writer: the records read back against the plan, determinism, size."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from ilsvrc_assets import (
    archives,
    bounding_boxes,
    contact_sheets,
    release,
    shard_plan,
    shard_previews,
    shards,
    synsets,
)
from ilsvrc_assets.formats.tfrecord import FORMAT as TFRECORD
from ilsvrc_assets.sources.official import ArchiveReader

SHARD = "validation-00000-of-00128"


class Built:
    """One validation shard of 128 (about 390 records, with their boxes) and the train index."""

    def __init__(self, release_dir: Path, out: Path):
        self.train_archive = release_dir / release.IMG_TRAIN.name
        self.validation_archive = release_dir / release.IMG_VAL.name
        devkit = synsets.read_devkit(release_dir / release.DEVKIT.name)
        synset_table = synsets.synset_table(devkit)
        labels = synsets.validation_labels(devkit, synset_table)
        self.train_index = archives.index_train_archive(self.train_archive, frozenset(synset_table["wnid"]))
        self.validation_index = archives.index_validation_archive(self.validation_archive, labels)
        boxes = bounding_boxes.read_validation_boxes(release_dir / release.BBOX_VAL.name, labels, workers=1)
        jobs = shard_plan.plan_split(
            "validation",
            self.validation_index,
            synset_table,
            bounding_boxes.boxes_by_image(boxes[boxes["kept"]]),
            ArchiveReader(self.validation_archive),
            out / "tfrecords",
            128,
            wanted=[SHARD],
        )
        self.job = jobs[SHARD]
        shards.write_shard(self.job, TFRECORD)


@pytest.fixture(scope="module")
def built(sample_release: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(sample_release, tmp_path_factory.mktemp("shard-previews"))


def test_first_records_are_the_shards_first_records(built: Built):
    records = shard_previews.first_records(built.job.path, 5)
    planned = built.job.records[:5]
    assert [r["image/filename"][0].decode() for r in records] == [s.filename for s in planned]
    assert [r["image/class/label"][0] for r in records] == [s.label for s in planned]
    assert [r["image/class/synset"][0].decode() for r in records] == [s.synset for s in planned]
    for record, source in zip(records, planned):
        assert len(record) == len(release.FEATURE_KEYS)
        assert record["image/object/bbox/xmin"] == pytest.approx([b[0] for b in source.boxes], abs=1e-6)
        assert record["image/object/bbox/ymax"] == pytest.approx([b[3] for b in source.boxes], abs=1e-6)
    picture = shard_previews.shard_strip(built.job.path)
    width = Image.open(io.BytesIO(picture.png)).width
    assert width == shard_previews.STRIP_RECORDS * (shard_previews.STRIP_TILE + 2 * contact_sheets.PADDING)


def test_a_shard_cut_short_is_named(built: Built, tmp_path: Path):
    cut = tmp_path / built.job.name
    cut.write_bytes(built.job.path.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"{cut.name}: ends inside record 0"):
        shard_previews.first_records(cut, 3)


def test_converted_images_are_shown_before_and_after(built: Built):
    converted = sorted(
        set(built.train_index["filename"]) & (release.png_train_files() | release.cmyk_train_files())
    )
    assert converted, "the sample release holds PNG and CMYK images"
    picture = shard_previews.converted_before_after(
        converted, built.train_index, ArchiveReader(built.train_archive)
    )
    shown = min(len(converted), shard_previews.CONVERTED_PAIRS)
    assert picture is not None and picture.caption.startswith(f"{shown} of {len(converted)}")
    assert (
        shard_previews.converted_before_after([], built.train_index, ArchiveReader(built.train_archive))
        is None
    )


def test_records_per_shard_says_the_extremes():
    picture = shard_previews.records_per_shard(
        {"train-00001-of-00003": 4, "train-00000-of-00003": 5, "train-00002-of-00003": 4}, "train"
    )
    assert picture.caption == "train: records in each of 3 shards, from 4 to 5"


def test_shard_previews_are_deterministic_and_small(built: Built):
    def made() -> list:
        return shard_previews.for_shards(
            "validation",
            {built.job.name: len(built.job.records)},
            built.job.path,
            [],  # no validation image needs converting
            built.validation_index,
            ArchiveReader(built.validation_archive),
        )

    first, second = made(), made()
    assert [p.name for p in first] == ["records_per_shard", "first_records"]
    assert [p.png for p in first] == [p.png for p in second]
    assert sum(len(base64.b64encode(p.png)) for p in first) < 1_000_000
