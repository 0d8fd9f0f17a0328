"""The TFRecord format: found by its name, writing one tf.train.Example per image."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from ilsvrc_assets import formats, images
from ilsvrc_assets.formats.tfrecord import FORMAT, INDEX, TFRecord, read_payload_lengths
from ilsvrc_assets.shard_plan import RecordSource, ShardJob
from ilsvrc_assets.sources.official import ArchiveReader
from ilsvrc_assets.tf_example import encode_example
from ilsvrc_assets_tests.helpers import gray_jpeg, rgb_jpeg, tfrecord2idx

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


# --- The DALI index written with each shard -----------------------------------------------------


def test_the_index_is_what_dalis_tfrecord2idx_writes(tmp_path: Path) -> None:
    pytest.importorskip("nvidia.dali")  # the test extra installs it; its wheel brings tfrecord2idx
    added = [(TENCH, rgb_jpeg(40, 30)), (GOLDFISH, gray_jpeg(7, 5)), (TENCH, rgb_jpeg(300, 200))]
    for name, records in (("train-00000-of-00002", added), ("train-00001-of-00002", [])):
        with FORMAT.open(tmp_path / name) as writer:
            for source, image in records:
                writer.add(source, image, images.probe(image, source.filename))
        ours = FORMAT.companion_data(writer, INDEX)
        assert ours == tfrecord2idx(tmp_path / name, tmp_path / f"{name}.idx")
        assert ours == FORMAT.companion_from_shard(tmp_path / name, INDEX)  # from the framing alone
    first = (tmp_path / "train-00000-of-00002.idx").read_text()  # "<offset> <length>\n" per record
    sizes = [len(encode_example(s, i, images.probe(i, s.filename))) + 16 for s, i in added]
    assert first == f"0 {sizes[0]}\n{sizes[0]} {sizes[1]}\n{sizes[0] + sizes[1]} {sizes[2]}\n"
    assert (tmp_path / "train-00001-of-00002.idx").read_bytes() == b""  # an empty shard, an empty index


def test_the_index_lives_beside_the_shards_folder_not_in_it() -> None:
    shard = Path("/data/tfrecords/train-00000-of-01024")
    assert FORMAT.companions == (INDEX,)
    assert INDEX.path(shard) == Path("/data/tfrecords-index/train-00000-of-01024.idx")


def test_framing_that_does_not_end_with_the_file_is_refused(tmp_path: Path) -> None:
    with FORMAT.open(tmp_path / "shard") as writer:
        for source, image in [(TENCH, rgb_jpeg(40, 30))] * 2:
            writer.add(source, image, images.probe(image, source.filename))
    data = (tmp_path / "shard").read_bytes()
    first = read_payload_lengths(tmp_path / "shard")[0] + 16
    for cut in (len(data) - 1, first + 5):  # inside the last payload, inside the second header
        (tmp_path / "cut").write_bytes(data[:cut])
        with pytest.raises(
            ValueError, match=rf"cut: not a complete TFRecord from byte {first:,} \(record 1, "
        ):
            read_payload_lengths(tmp_path / "cut")
