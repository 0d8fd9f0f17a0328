"""The DALI index files of a build: NVIDIA DALI's own TFRecord reader reads every record of the built
sample's shards through them (CPU only), and they are byte for byte what DALI's ``tfrecord2idx`` writes.

``nvidia-dali-cuda120`` is in the test extra (it runs CPU-only pipelines without a GPU); these tests
are skipped only where it cannot be installed.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest

from ilsvrc_assets import archives, release
from ilsvrc_assets.formats.tfrecord import INDEX
from ilsvrc_assets.settings import Settings
from ilsvrc_assets_tests.helpers import tfrecord2idx

dali = pytest.importorskip("nvidia.dali")
tf = pytest.importorskip("tensorflow")

BATCH = 512


@pytest.fixture(scope="module")
def built(built_sample_graph) -> tuple[Settings, dict[str, list[Path]]]:
    """The built sample's settings and its shards, by split."""
    settings, _, _, failed = built_sample_graph
    assert failed == [], f"the sample graph did not build: {failed}"
    return settings, {
        s: [settings.tfrecords_dir / n for n in settings.shard_names(s)] for s in release.SPLITS
    }


def records_by_tensorflow(paths: list[Path]) -> list[tuple[str, int, str, tuple[int, int]]]:
    """(file name, label, MD5 of the image bytes, (height, width)) of every record, in file order."""
    found = []
    for path in paths:
        for raw in tf.compat.v1.io.tf_record_iterator(str(path)):
            f = tf.train.Example.FromString(raw).features.feature
            found.append(
                (
                    f["image/filename"].bytes_list.value[0].decode(),
                    f["image/class/label"].int64_list.value[0],
                    hashlib.md5(f["image/encoded"].bytes_list.value[0]).hexdigest(),
                    (f["image/height"].int64_list.value[0], f["image/width"].int64_list.value[0]),
                )
            )
    return found


def records_by_dali(paths: list[Path]) -> list[tuple[str, int, str, tuple[int, int]]]:
    """The same, read by DALI's ``fn.readers.tfrecord`` with our index files, each image decoded on the CPU."""
    from nvidia.dali import fn, pipeline_def
    from nvidia.dali import tfrecord as tfrec

    @pipeline_def(batch_size=BATCH, num_threads=2, device_id=None)
    def every_record():
        r = fn.readers.tfrecord(
            path=[str(p) for p in paths],
            index_path=[str(INDEX.path(p)) for p in paths],
            features={
                "image/encoded": tfrec.FixedLenFeature((), tfrec.string, ""),
                "image/class/label": tfrec.FixedLenFeature([1], tfrec.int64, -1),
                "image/filename": tfrec.FixedLenFeature((), tfrec.string, ""),
            },
            random_shuffle=False,
            pad_last_batch=True,  # the last batch repeats the last record instead of starting over
            name="reader",
        )
        decoded = fn.decoders.image(r["image/encoded"], device="cpu")
        return r["image/filename"], r["image/class/label"], r["image/encoded"], decoded.shape()

    pipe = every_record()
    pipe.build()
    total = pipe.epoch_size("reader")
    found = []
    for _ in range(math.ceil(total / BATCH)):
        names, labels, encoded, shapes = pipe.run()
        for i in range(len(names)):
            height, width, channels = (int(x) for x in shapes.at(i))
            assert channels == 3
            found.append(
                (
                    names.at(i).tobytes().decode(),
                    int(labels.at(i)[0]),
                    hashlib.md5(encoded.at(i).tobytes()).hexdigest(),
                    (height, width),
                )
            )
    return found[:total]


@pytest.mark.parametrize("split", release.SPLITS)
def test_dali_reads_every_record_through_our_index_files(built, split) -> None:
    settings, shards = built
    expected = records_by_tensorflow(shards[split])
    assert len(expected) == len(archives.read_index(settings.image_index(split)))  # every image
    assert records_by_dali(shards[split]) == expected  # count, order, labels, image bytes, decoded sizes


def test_our_index_files_are_what_tfrecord2idx_writes(built, tmp_path: Path) -> None:
    for path in [p for paths in built[1].values() for p in paths]:
        ours = INDEX.path(path).read_bytes()
        assert ours == tfrecord2idx(path, tmp_path / f"{path.name}.idx"), path.name
        assert ours.count(b"\n") > 0 and ours.endswith(b"\n")
