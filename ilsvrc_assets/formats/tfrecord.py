"""TFRecord shards of the TF/TPU model zoo's ``tf.train.Example`` (``tf_example.encode_example``).

A shard is a TFRecord file (each record framed by its length and two CRCs, written by
TensorFlow's own ``tf.io.TFRecordWriter``) named like the shard, e.g. ``train-00000-of-01024``,
in ``<data>/tfrecords``; a shard without images is an empty file. ``shard_scan`` reads them back.

Each shard has a companion: its NVIDIA DALI index ``<data>/tfrecords-index/<shard>.idx`` (not in
``tfrecords/``, where the TPU reader globs ``train-*``), byte for byte what DALI's ``tfrecord2idx``
writes: one line ``<offset> <length>\\n`` per record, the length counting the framing (8-byte length,
its 4-byte CRC, the payload, the payload's 4-byte CRC); an empty shard has an empty index. The
writer knows each record's length (it serializes the example), so the index costs no second pass.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ilsvrc_assets import tf_example
from ilsvrc_assets.formats import Companion, RecordFormat
from ilsvrc_assets.images import ImageInfo
from ilsvrc_assets.shard_plan import RecordSource, ShardJob

# Per-record bytes besides the image (TFRecord framing, the other 14 features), generously.
RECORD_OVERHEAD = 1024
# Each record: its length (8 bytes, little-endian), the length's CRC (4), the payload, the payload's CRC (4).
FRAMING = 16
INDEX = Companion(kind="index", folder="tfrecords-index", suffix=".idx")


def index_text(payload_lengths: Iterable[int]) -> bytes:
    """The DALI index of a TFRecord file whose records have these payload lengths, in order."""
    lines = []
    offset = 0
    for n in payload_lengths:
        lines.append(f"{offset} {FRAMING + n}\n")
        offset += FRAMING + n
    return "".join(lines).encode()


def read_payload_lengths(path: Path) -> list[int]:
    """The payload length of each record of the TFRecord file at ``path``, from its framing headers
    only (one 8-byte read per record, the payloads are skipped; CRCs are not verified).

    Raises ValueError naming the file and the offset when the framing does not end exactly at the
    end of the file (truncated, or not a TFRecord file)."""
    lengths = []
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset < size:
            header = os.pread(f.fileno(), 8, offset)
            (n,) = struct.unpack("<q", header) if len(header) == 8 else (-1,)
            if n < 0 or offset + FRAMING + n > size:
                raise ValueError(
                    f"{path}: not a complete TFRecord from byte {offset:,} (record {len(lengths)}, "
                    f"{size - offset:,} bytes left)"
                )
            lengths.append(n)
            offset += FRAMING + n
    return lengths


class TFRecordWriter:
    """A TFRecord file being written: one serialized ``tf.train.Example`` per image."""

    def __init__(self, writer: Any):
        self._writer = writer
        self.lengths: list[int] = []  # each record's payload length, for the index

    def add(self, source: RecordSource, image: bytes, info: ImageInfo) -> None:
        serialized = tf_example.encode_example(source, image, info)
        self._writer.write(serialized)
        self.lengths.append(len(serialized))


class TFRecord(RecordFormat):
    """The model zoo's TFRecord shards, each with its DALI index."""

    name = "tfrecord"
    folder = "tfrecords"
    companions = (INDEX,)

    def space_needed(self, job: ShardJob) -> int:
        # Its images (2 % more for the few re-encoded) plus the framing and the other features.
        return sum(r.size for r in job.records) * 102 // 100 + RECORD_OVERHEAD * len(job.records)

    @contextmanager
    def open(self, path: Path) -> Iterator[TFRecordWriter]:
        import tensorflow as tf  # in the worker process only

        with tf.io.TFRecordWriter(str(path)) as writer:
            yield TFRecordWriter(writer)

    def companion_data(self, writer: TFRecordWriter, companion: Companion) -> bytes:
        assert companion == INDEX
        return index_text(writer.lengths)

    def companion_from_shard(self, shard_path: Path, companion: Companion) -> bytes:
        assert companion == INDEX
        return index_text(read_payload_lengths(shard_path))


FORMAT = TFRecord()
