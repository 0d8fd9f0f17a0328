"""Records for the tests of the tf.train.Example and the read-back: two sources, and writing,
encoding and editing records. (To fold into the tests' helpers module.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ilsvrc_assets import images
from ilsvrc_assets.shard_plan import RecordSource
from ilsvrc_assets.tf_example import encode_example

TENCH = RecordSource(
    filename="n01440764_10026.JPEG",
    synset="n01440764",
    label=1,
    text="tench, Tinca tinca",
    offset=0,
    size=0,
    boxes=((0.1, 0.2, 0.5, 0.75), (0.0, 0.0, 1.0, 1.0)),
)
TOILET_TISSUE = RecordSource(
    filename="ILSVRC2012_val_00000293.JPEG",
    synset="n15075141",
    label=1000,
    text="toilet tissue, toilet paper, bathroom tissue",
    offset=0,
    size=0,
)


def encode(source: RecordSource, data: bytes) -> bytes:
    return encode_example(source, data, images.probe(data, source.filename))


def write_records(path: Path, serialized: list[bytes]) -> Path:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in serialized:
            writer.write(record)
    return path


def edited(record: bytes, edit: Callable[[object], None]) -> bytes:
    """``record`` with its tf.train.Example changed by ``edit(features.feature)``."""
    import tensorflow as tf

    example = tf.train.Example.FromString(record)
    edit(example.features.feature)
    return example.SerializeToString(deterministic=True)
