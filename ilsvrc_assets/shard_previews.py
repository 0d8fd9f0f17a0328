"""Previews of the shard assets: records per shard, the first records of a shard decoded from
the file itself, and the images the run re-encoded, before and after.

The shard is read without TensorFlow (importing it costs seconds, more than every preview
together): the TFRecord framing is four fields, and the records are parsed by protobuf with the
schema of TensorFlow's ``tf.train.Example``. The manifest reads every record with TensorFlow
itself; this reads only the first few, for a picture.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ilsvrc_assets import contact_sheets, formats, images, release
from ilsvrc_assets.contact_sheets import Box, Tile
from ilsvrc_assets.previews import TOP_COLOUR, Picture, Preview, figure_png, new_figure

if TYPE_CHECKING:
    from ilsvrc_assets.formats import RecordFormat
    from ilsvrc_assets.sources import ImageReader


def records_per_shard(records: Mapping[str, int], split: str) -> Picture:
    """Records per shard, in shard order (the assignment's evenness)."""
    names = sorted(records)
    values = np.array([records[n] for n in names], dtype="int64")
    with new_figure(9, 2.4) as (figure, ax):
        ax.stairs(values, np.arange(len(values) + 1) - 0.5, fill=True, color=TOP_COLOUR)
        ax.set_xlim(-0.5, max(len(values), 1) - 0.5)
        ax.set_xlabel(f"shard ({len(values):,})")
        ax.set_ylabel("records")
        low, high = (int(values.min()), int(values.max())) if len(values) else (0, 0)
        ax.set_title(f"{split}: records per shard, {low:,} to {high:,}")
        png = figure_png(figure)
    return Picture(
        "records_per_shard",
        png,
        f"{split}: records in each of {len(values):,} shards, from {low:,} to {high:,}",
    )


@lru_cache(maxsize=1)
def _example_class() -> type:
    """``tf.train.Example`` as a protobuf message class, without importing TensorFlow (seconds).

    The schema is that of TensorFlow's ``example.proto`` and ``feature.proto`` (field numbers and
    types; the ``feature`` map as its wire-identical repeated entry message), in a private pool.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="ilsvrc_assets/example.proto", package="tensorflow")
    messages = {
        "BytesList": [("value", 1, field.TYPE_BYTES, field.LABEL_REPEATED, None)],
        "FloatList": [("value", 1, field.TYPE_FLOAT, field.LABEL_REPEATED, None)],
        "Int64List": [("value", 1, field.TYPE_INT64, field.LABEL_REPEATED, None)],
        "Feature": [
            ("bytes_list", 1, field.TYPE_MESSAGE, field.LABEL_OPTIONAL, ".tensorflow.BytesList"),
            ("float_list", 2, field.TYPE_MESSAGE, field.LABEL_OPTIONAL, ".tensorflow.FloatList"),
            ("int64_list", 3, field.TYPE_MESSAGE, field.LABEL_OPTIONAL, ".tensorflow.Int64List"),
        ],
        "FeatureEntry": [
            ("key", 1, field.TYPE_STRING, field.LABEL_OPTIONAL, None),
            ("value", 2, field.TYPE_MESSAGE, field.LABEL_OPTIONAL, ".tensorflow.Feature"),
        ],
        "Features": [("feature", 1, field.TYPE_MESSAGE, field.LABEL_REPEATED, ".tensorflow.FeatureEntry")],
        "Example": [("features", 1, field.TYPE_MESSAGE, field.LABEL_OPTIONAL, ".tensorflow.Features")],
    }
    for name, fields in messages.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            message.field.add(name=field_name, number=number, type=kind, label=label, type_name=type_name)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def first_records(path: Path, count: int) -> list[dict[str, Any]]:
    """The first ``count`` records of a TFRecord file as {feature key: value or list of values}.

    Reads the TFRecord framing directly (length, its CRC, data, its CRC) and only as far as
    needed; the CRCs are not verified here (the manifest reads every record with TensorFlow).
    Raises ValueError naming the file when it ends inside a record.
    """
    found = []
    example_class = _example_class()
    with open(path, "rb") as f:
        while len(found) < count:
            header = f.read(12)
            if not header:
                break
            if len(header) < 12:
                raise ValueError(
                    f"{path.name}: ends inside the header of record {len(found)}; the shard is cut short"
                )
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length + 4)[:length]
            if len(data) < length:
                raise ValueError(f"{path.name}: ends inside record {len(found)}; the shard is cut short")
            example = example_class.FromString(data)
            record = {}
            for entry in example.features.feature:
                value = entry.value  # one of the three lists is set
                record[entry.key] = list(
                    value.bytes_list.value or value.float_list.value or value.int64_list.value
                )
            found.append(record)
    return found


STRIP_RECORDS = 8
STRIP_TILE = 112


def shard_strip(path: Path, count: int = STRIP_RECORDS, record_format: RecordFormat | None = None) -> Picture:
    """The first ``count`` records of the shard at ``path`` (in ``record_format``, default TFRecord),
    decoded from the shard itself, labelled with their label, synset and file name."""
    record_format = record_format or formats.by_name(formats.DEFAULT)
    tiles = [
        Tile(
            record.image,
            (f"{record.label} {record.synset}", record.filename.removeprefix("ILSVRC2012_")),
            tuple(Box(*box) for box in record.boxes),
        )
        for record in record_format.first_records(path, count)
    ]
    sheet = contact_sheets.draw_sheet(tiles, count, STRIP_TILE)
    return Picture(
        "first_records",
        sheet.png,
        f"the first {len(tiles)} records of {path.name}, decoded from the shard: label, synset, file "
        "name, and the record's boxes",
    )


CONVERTED_PAIRS = 8


def converted_before_after(
    filenames: Sequence[str], index: pd.DataFrame, reader: ImageReader, pairs: int = CONVERTED_PAIRS
) -> Picture | None:
    """The images re-encoded to RGB JPEG (PNG, CMYK) as in the archive and as stored, side by side.

    ``filenames`` are those a run converted (``ShardStats.converted``); at most ``pairs`` are
    shown, the PNG ones first. The stored bytes are made again with ``images.prepare``, the
    function the shard writer uses, from the archive member read by its index offset. None when
    nothing was converted.
    """
    chosen = sorted(filenames, key=lambda f: (f not in release.png_train_files(), f))[:pairs]
    if not chosen:
        return None
    where = index[index["filename"].isin(chosen)].set_index("filename")
    tiles = []
    with reader.open() as reading:
        originals = [
            (name, reading.read(name, int(where.at[name, "offset"]), int(where.at[name, "size"])))
            for name in chosen
        ]
    for name, original in originals:
        before = images.probe(original, name)
        stored, after = images.prepare(original, name)
        kind = "PNG" if before.format == "PNG" else f"{before.components}-channel JPEG"
        tiles.append(Tile(original, (name, f"before: {kind}")))
        tiles.append(Tile(stored, (f"{after.width}x{after.height}", "after: RGB JPEG")))
    sheet = contact_sheets.draw_sheet(tiles, 4, STRIP_TILE)
    return Picture(
        "converted_images",
        sheet.png,
        f"{len(chosen)} of {len(filenames)} converted images: as in the archive (left) and as stored in "
        "the record (right); the colours should agree",
    )


def for_shards(
    split: str,
    records: Mapping[str, int],
    shard: Path,
    converted: Sequence[str],
    index: pd.DataFrame,
    reader: ImageReader,
    record_format: RecordFormat | None = None,
) -> list[Preview]:
    """The previews of a shard asset (``train_shards``, ``validation_shards``, ...) after a run.

    ``records`` is records per shard name (the run's jobs or stats), ``shard`` one written shard
    file (the run's first, in ``record_format``), ``converted`` the file names the run re-encoded,
    with the split's ``index`` and ``reader`` to read the originals with.
    """
    previews: list[Preview] = [
        records_per_shard(records, split),
        shard_strip(shard, record_format=record_format),
    ]
    if (pair := converted_before_after(converted, index, reader)) is not None:
        previews.append(pair)
    return previews
