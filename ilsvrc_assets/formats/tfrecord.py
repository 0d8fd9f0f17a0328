"""TFRecord shards of the TF/TPU model zoo's ``tf.train.Example`` (``tf_example.encode_example``).

A shard is a TFRecord file (each record framed by its length and two masked CRC-32Cs, the bytes
``tf.io.TFRecordWriter`` writes; framed here, so that the writer hashes the bytes as it writes them)
named like the shard, e.g. ``train-00000-of-01024``,
in ``<data>/tfrecords``; a shard without images is an empty file. ``shard_scan`` reads them back.

Each shard has a companion: its NVIDIA DALI index ``<data>/tfrecords-index/<shard>.idx`` (not in
``tfrecords/``, where the TPU reader globs ``train-*``), byte for byte what DALI's ``tfrecord2idx``
writes: one line ``<offset> <length>\\n`` per record, the length counting the framing (8-byte length,
its 4-byte CRC, the payload, the payload's 4-byte CRC); an empty shard has an empty index. The
writer knows each record's length (it serializes the example), so the index costs no second pass.

While it writes, the writer's records are checked (``shard_scan.RecordCheck``): parsed with TensorFlow
and the model zoo's spec, their images compared with the archive's bytes or decoded.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import google_crc32c

from ilsvrc_assets import fileio, release, tf_example
from ilsvrc_assets.formats import Companion, HashedFileWriter, RecordFormat, StoredRecord
from ilsvrc_assets.images import ImageInfo
from ilsvrc_assets.shard_plan import RecordSource, ShardJob

if TYPE_CHECKING:
    from ilsvrc_assets.shard_scan import RecordCheck, ShardScan

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


def masked_crc(data: bytes) -> bytes:
    """The 4 bytes TFRecord framing stores for ``data``: its CRC-32C, masked as TensorFlow masks it."""
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def framed(payload: bytes) -> tuple[bytes, bytes]:
    """The framing around ``payload`` in a TFRecord file: (length and its CRC, the payload's CRC)."""
    length = struct.pack("<Q", len(payload))
    return length + masked_crc(length), masked_crc(payload)


class TFRecordWriter(HashedFileWriter):
    """A TFRecord file being written: one serialized ``tf.train.Example`` per image."""

    def __init__(self, file: fileio.HashedWriter):
        self._file = file
        self.lengths: list[int] = []  # each record's payload length, for the index

    def add(self, source: RecordSource, image: bytes, info: ImageInfo) -> bytes:
        """Write the record; returns it (the serialized example) for the checks."""
        return self.write_record(tf_example.encode_example(source, image, info))

    def write_record(self, serialized: bytes) -> bytes:
        """Write ``serialized`` as the next record, framed; returns it."""
        head, tail = framed(serialized)
        self._file.write(head)
        self._file.write(serialized)
        self._file.write(tail)
        self.lengths.append(len(serialized))
        return serialized


class TFRecord(RecordFormat):
    """The model zoo's TFRecord shards, each with its DALI index."""

    name = "tfrecord"
    folder = "tfrecords"
    companions = (INDEX,)
    asset_suffix = "shards"
    record_keys = release.FEATURE_KEYS
    check_descriptions: ClassVar[dict[str, str]] = {
        "records_parse": "Every record parses with tf.io.parse_single_example and the model zoo's feature "
        "spec, with exactly the 15 features (each record as its writer wrote it; in the audit, as read back).",
        "images_decode": "Every image/encoded is an RGB or grayscale JPEG of the recorded size, and is the "
        "archive's bytes (CRC-32 as read, while writing) or decodes: every re-encoded image, every image "
        "when the archives are not the official ones, else a fixed 1-in-64 sample (the audit can decode all).",
    }

    def space_needed(self, job: ShardJob) -> int:
        # Its images (2 % more for the few re-encoded) plus the framing and the other features.
        return sum(r.size for r in job.records) * 102 // 100 + RECORD_OVERHEAD * len(job.records)

    @contextmanager
    def open(self, path: Path) -> Iterator[TFRecordWriter]:
        with open(path, "wb", buffering=1 << 20) as f:
            yield TFRecordWriter(fileio.HashedWriter(f))

    def checker(self, name: str, policy: str) -> RecordCheck:
        from ilsvrc_assets.shard_scan import RecordCheck  # TensorFlow: in the worker process only

        return RecordCheck(name, policy)

    def companion_data(self, writer: TFRecordWriter, companion: Companion) -> bytes:
        assert companion == INDEX
        return index_text(writer.lengths)

    def companion_from_shard(self, shard_path: Path, companion: Companion) -> bytes:
        assert companion == INDEX
        return index_text(read_payload_lengths(shard_path))

    def scan(self, path: Path, decode: bool | str = True) -> ShardScan:
        from ilsvrc_assets.shard_scan import scan_shard  # which reads the framing defined here

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
