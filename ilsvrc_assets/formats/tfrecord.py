"""TFRecord shards of the TF/TPU model zoo's ``tf.train.Example`` (``tf_example.encode_example``).

A shard is a TFRecord file (each record framed by its length and two CRCs, written by
TensorFlow's own ``tf.io.TFRecordWriter``) named like the shard, e.g. ``train-00000-of-01024``,
in ``<data>/tfrecords``; a shard without images is an empty file. ``shard_scan`` reads them back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from ilsvrc_assets import release, tf_example
from ilsvrc_assets.formats import RecordFormat, StoredRecord
from ilsvrc_assets.images import ImageInfo
from ilsvrc_assets.shard_plan import RecordSource, ShardJob
from ilsvrc_assets.shard_scan import ShardScan, scan_shard

# Per-record bytes besides the image (TFRecord framing, the other 14 features), generously.
RECORD_OVERHEAD = 1024


class TFRecordWriter:
    """A TFRecord file being written: one serialized ``tf.train.Example`` per image."""

    def __init__(self, writer: Any):
        self._writer = writer

    def add(self, source: RecordSource, image: bytes, info: ImageInfo) -> None:
        self._writer.write(tf_example.encode_example(source, image, info))


class TFRecord(RecordFormat):
    """The model zoo's TFRecord shards."""

    name = "tfrecord"
    folder = "tfrecords"
    asset_suffix = "shards"
    record_keys = release.FEATURE_KEYS
    check_descriptions: ClassVar[dict[str, str]] = {
        "records_parse": "Every record parses with tf.io.parse_single_example and the model zoo's feature "
        "spec, with exactly the 15 features.",
        "images_decode": "Every image/encoded decodes as a JPEG.",
    }

    def space_needed(self, job: ShardJob) -> int:
        # Its images (2 % more for the few re-encoded) plus the framing and the other features.
        return sum(r.size for r in job.records) * 102 // 100 + RECORD_OVERHEAD * len(job.records)

    @contextmanager
    def open(self, path: Path) -> Iterator[TFRecordWriter]:
        import tensorflow as tf  # in the worker process only

        with tf.io.TFRecordWriter(str(path)) as writer:
            yield TFRecordWriter(writer)

    def scan(self, path: Path, decode: bool = True) -> ShardScan:
        return scan_shard(path, decode)

    def first_records(self, path: Path, count: int) -> list[StoredRecord]:
        from ilsvrc_assets.shard_previews import first_records  # reads the framing, without TensorFlow

        def first(record: dict, key: str, default: Any) -> Any:
            return record.get(key, [default])[0]

        return [
            StoredRecord(
                filename=first(record, "image/filename", b"").decode(),
                synset=first(record, "image/class/synset", b"").decode(),
                label=first(record, "image/class/label", 0),
                image=first(record, "image/encoded", b""),
                boxes=tuple(
                    zip(*(record.get(f"image/object/bbox/{k}", []) for k in ("xmin", "ymin", "xmax", "ymax")))
                ),
            )
            for record in first_records(path, count)
        ]


FORMAT = TFRecord()
