"""TFRecord shards of the TF/TPU model zoo's ``tf.train.Example`` (``tf_example.encode_example``).

A shard is a TFRecord file (each record framed by its length and two CRCs, written by
TensorFlow's own ``tf.io.TFRecordWriter``) named like the shard, e.g. ``train-00000-of-01024``,
in ``<data>/tfrecords``; a shard without images is an empty file. ``shard_scan`` reads them back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ilsvrc_assets import tf_example
from ilsvrc_assets.formats import RecordFormat
from ilsvrc_assets.images import ImageInfo
from ilsvrc_assets.shard_plan import RecordSource, ShardJob

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

    def space_needed(self, job: ShardJob) -> int:
        # Its images (2 % more for the few re-encoded) plus the framing and the other features.
        return sum(r.size for r in job.records) * 102 // 100 + RECORD_OVERHEAD * len(job.records)

    @contextmanager
    def open(self, path: Path) -> Iterator[TFRecordWriter]:
        import tensorflow as tf  # in the worker process only

        with tf.io.TFRecordWriter(str(path)) as writer:
            yield TFRecordWriter(writer)


FORMAT = TFRecord()
