"""The TFRecord format: found by its name, writing one tf.train.Example per image."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from ilsvrc_assets import formats, images
from ilsvrc_assets.formats.tfrecord import FORMAT, TFRecord
from ilsvrc_assets.shard_plan import RecordSource, ShardJob
from ilsvrc_assets.tf_example import encode_example
from ilsvrc_assets.sources.official import ArchiveReader
from ilsvrc_assets_tests.helpers import gray_jpeg, rgb_jpeg

tf = pytest.importorskip("tensorflow")

TENCH = RecordSource("n01440764_1.JPEG", "n01440764", 1, "tench, Tinca tinca", 0, 0, ((0.1, 0.2, 0.5, 0.6),))
GOLDFISH = RecordSource("n01443537_2.JPEG", "n01443537", 2, "goldfish, Carassius auratus", 0, 0)


def test_the_format_is_found_by_its_name_and_travels_to_workers() -> None:
    assert formats.by_name("tfrecord") is FORMAT and formats.DEFAULT == "tfrecord"
    assert (FORMAT.name, FORMAT.folder, FORMAT.file_name("train-00000-of-01024")) == (
        "tfrecord",
        "tfrecords",
        "train-00000-of-01024",
    )
    assert isinstance(pickle.loads(pickle.dumps(FORMAT)), TFRecord)
    with pytest.raises(ValueError, match="unknown record format 'parquet'; known: tfrecord, webdataset"):
        formats.by_name("parquet")


def test_a_shard_is_one_framed_example_per_image_in_order(tmp_path: Path) -> None:
    added = [(TENCH, rgb_jpeg(40, 30)), (GOLDFISH, gray_jpeg(7, 5))]
    with FORMAT.open(tmp_path / "shard") as writer:
        for source, image in added:
            writer.add(source, image, images.probe(image, source.filename))
    assert list(tf.compat.v1.io.tf_record_iterator(str(tmp_path / "shard"))) == [
        encode_example(source, image, images.probe(image, source.filename)) for source, image in added
    ]
    with FORMAT.open(tmp_path / "empty"):
        pass
    assert (tmp_path / "empty").read_bytes() == b""  # a valid TFRecord file of no records


def test_space_needed_is_at_least_what_a_shard_takes(tmp_path: Path) -> None:
    added = [(TENCH, rgb_jpeg(64, 48)), (GOLDFISH, gray_jpeg(3, 2))] * 5
    with FORMAT.open(tmp_path / "shard") as writer:
        for source, image in added:
            writer.add(source, image, images.probe(image, source.filename))
    job = ShardJob(
        "train-00000-of-00001",
        tmp_path / "shard",
        ArchiveReader(tmp_path / "archive.tar"),
        tuple(RecordSource(**{**s.__dict__, "size": len(image)}) for s, image in added),
    )
    assert (
        (tmp_path / "shard").stat().st_size
        <= FORMAT.space_needed(job)
        <= 2 * 1024 * len(added) + 2 * sum(len(image) for _, image in added)
    )
